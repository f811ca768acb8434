"""`fvlm precompute`."""

from __future__ import annotations

import typer

from fvlm_cli.commands._common import not_yet


def precompute(ctx: typer.Context) -> None:
    """(coming) See SPEC: `fvlm precompute`."""
    not_yet("precompute")
