"""`fvlm upload`."""

from __future__ import annotations

import typer

from fvlm_cli.commands._common import not_yet


def upload(ctx: typer.Context) -> None:
    """(coming) See SPEC: `fvlm upload`."""
    not_yet("upload")
