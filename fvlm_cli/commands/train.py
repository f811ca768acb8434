"""`fvlm train`."""

from __future__ import annotations

import typer

from fvlm_cli.commands._common import not_yet


def train(ctx: typer.Context) -> None:
    """(coming) See SPEC: `fvlm train`."""
    not_yet("train")
