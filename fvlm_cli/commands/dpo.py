"""`fvlm dpo`."""

from __future__ import annotations

import typer

from fvlm_cli.commands._common import not_yet


def dpo(ctx: typer.Context) -> None:
    """(coming) See SPEC: `fvlm dpo`."""
    not_yet("dpo")
