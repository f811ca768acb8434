"""Options and helpers shared by the subcommands (typer annotations; nothing heavy imported)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (or a name under configs/, see `fvlm config list`).")
SetOpt = typer.Option(None, "--set", help="Override a config key: --set train.steps=100 (repeatable).")
PrintConfigOpt = typer.Option(False, "--print-config", help="Print the fully resolved config and exit.")
ModelOpt = typer.Option("sanps/fVLM-135M", "--model", "-m", help="Hub id, model folder, checkpoint, run dir, or preset (tiny, fvlm-135m, ...).")
DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N")
DtypeOpt = typer.Option("auto", "--dtype", help="auto | bf16 | fp32")
JsonOpt = typer.Option(False, "--json", help="Machine-readable JSON lines on stdout.")


def flag(schema: type, key: str, *decls: str, help: Optional[str] = None, **kw):
    """A typer option bound to config key `key` (dotted) of the dataclass `schema`.

    Its default is None: the default lives once, in the dataclass, and is shown in the help from there.
    `flag_values` turns the flags a user actually gave into `{dotted key: value}` for the config.
    """
    from fvlm_cli.config import describe

    rows = {k: (default, text) for k, _, default, text in describe(schema)}
    if key not in rows:
        raise KeyError(f"{schema.__name__} has no key {key!r}")
    default, text = rows[key]
    shown = "none" if default is None else default
    return typer.Option(None, *decls, help=f"{help or text} (default: {shown}; config key {key}).",
                        show_default=False, **kw)


def flag_values(ctx: typer.Context, bindings: dict[str, str]) -> dict[str, object]:
    """{dotted config key: value} for every bound flag given on the command line (param name -> key)."""
    out = {}
    for name, key in bindings.items():
        value = ctx.params.get(name)
        if value is not None:
            out[key] = str(value) if isinstance(value, Path) else value
    return out


def print_config(obj) -> None:
    from fvlm_cli import config

    typer.echo(config.dump(obj), nl=False)

