"""`fvlm speedrun`."""

from __future__ import annotations

import typer

from fvlm_cli.commands._common import not_yet


def speedrun(ctx: typer.Context) -> None:
    """(coming) See SPEC: `fvlm speedrun`."""
    not_yet("speedrun")
