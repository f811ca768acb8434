"""`fvlm bench`."""

from __future__ import annotations

import typer

from fvlm_cli.commands._common import not_yet


def bench(ctx: typer.Context) -> None:
    """(coming) See SPEC: `fvlm bench`."""
    not_yet("bench")
