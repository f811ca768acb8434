"""`fvlm config list|show|validate`: configs are first-class files shipped with the package."""

from __future__ import annotations

from typing import List, Optional

import typer

from fvlm_cli.commands._common import SetOpt

app = typer.Typer(help="List, show and validate configs.", no_args_is_help=True)


@app.command("list")
def list_configs() -> None:
    """List the shipped configs (model presets and stage recipes)."""
    from rich.console import Console
    from rich.table import Table

    from fvlm_cli.config import CONFIG_DIR

    table = Table("name", "file")
    for p in sorted(CONFIG_DIR.rglob("*.yaml")):
        table.add_row(str(p.relative_to(CONFIG_DIR).with_suffix("")), str(p))
    Console().print(table)


@app.command("show")
def show(name: str = typer.Argument(..., help="config name or path"), overrides: Optional[List[str]] = SetOpt) -> None:
    """Print a config fully resolved (defaults filled in, overrides applied)."""
    from fvlm_cli import config

    typer.echo(config.dump(_resolve(name, overrides)), nl=False)


@app.command("validate")
def validate(name: str = typer.Argument(..., help="config name or path"), overrides: Optional[List[str]] = SetOpt) -> None:
    """Check a config before a long run: keys, types, and that referenced paths exist (local shard sets must resolve
    to at least one shard; remote ones, URL / pipe: / hf://, are listed, not fetched)."""
    from pathlib import Path as _P

    from fvlm_cli.data import remote
    from fvlm_cli.data.shards import resolve_shards
    from fvlm_cli.errors import DataError
    from fvlm_cli.settings import RunConfig

    cfg = _resolve(name, overrides)
    missing, unchecked = [], []
    if isinstance(cfg, RunConfig):
        for spec in [s.path for s in [*cfg.data.train, *cfg.data.text]] + ([cfg.data.val] if cfg.data.val else []):
            if remote.is_remote(spec):
                unchecked.append(spec)
                continue
            try:
                resolve_shards(spec)
            except DataError:
                missing.append(spec)
        if cfg.train.init_from and not _P(cfg.train.init_from).exists():
            missing.append(f"init_from {cfg.train.init_from}")
    typer.echo(f"ok: {name} (keys and types valid)")
    if missing:
        typer.echo("not found yet (create them before training): " + ", ".join(missing))
    if unchecked:
        typer.echo("remote, not checked: " + ", ".join(unchecked))


@app.command("keys")
def keys(section: str = typer.Argument("", help="only keys starting with this prefix")) -> None:
    """List every config key with its type, default and help."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from fvlm_cli import config
    from fvlm_cli.settings import RunConfig

    table = Table("key", "type", "default", "help")
    for key, tp, default, help_ in config.describe(RunConfig):
        if key.startswith(section):
            table.add_row(*map(escape, (key, tp, repr(default), help_)))  # `list[str]` is not a markup tag
    Console().print(table)


def _resolve(name: str, overrides):
    from fvlm_cli import config
    from fvlm_cli.settings import ModelConfig

    data = config.read_yaml(name)
    if "model" not in data and ("llm" in data or "dino" in data):  # a bare model preset
        return config.load(ModelConfig, name, overrides)
    from fvlm_cli.train.loop import load_run_config

    return load_run_config(name, overrides)
