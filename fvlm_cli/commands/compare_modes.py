"""`fvlm compare-modes`."""

from __future__ import annotations

import typer

from fvlm_cli.commands._common import not_yet


def compare_modes(ctx: typer.Context) -> None:
    """(coming) See SPEC: `fvlm compare-modes`."""
    not_yet("compare-modes")
