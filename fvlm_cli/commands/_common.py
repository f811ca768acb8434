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


def not_yet(command: str) -> None:
    from fvlm_cli.errors import NotYetAvailable

    raise NotYetAvailable(f"`fvlm {command}` is not available in this build yet")


def print_config(obj) -> None:
    from fvlm_cli import config

    typer.echo(config.dump(obj), nl=False)


def existing_path(p: Optional[Path], what: str) -> Path:
    from fvlm_cli.errors import FvlmError

    if p is None or not Path(p).exists():
        raise FvlmError(f"{what} not found: {p}")
    return Path(p)


def check_media_args(media, order) -> None:
    """The checks every media command makes before loading a model: --order valid, every file present."""
    from fvlm_cli.errors import FvlmError

    if order not in (None, "video_first", "question_first"):
        raise FvlmError(f"--order {order!r}: use video_first or question_first")
    for m in media:
        if not Path(m).exists():
            raise FvlmError(f"media file not found: {m}")
