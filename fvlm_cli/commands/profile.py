"""`fvlm profile`."""

from __future__ import annotations

import typer

from fvlm_cli.commands._common import not_yet


def profile(ctx: typer.Context) -> None:
    """(coming) See SPEC: `fvlm profile`."""
    not_yet("profile")
