"""`fvlm caption`."""

from __future__ import annotations

import typer

from fvlm_cli.commands._common import not_yet


def caption(ctx: typer.Context) -> None:
    """Caption or answer questions about videos and images."""
    not_yet("caption")
