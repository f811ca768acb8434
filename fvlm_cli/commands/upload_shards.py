"""`fvlm upload-shards DIR --repo-id OWNER/NAME`: push a finished shard set + manifest to a Hub dataset repo."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fvlm_cli.commands._common import JsonOpt


def upload_shards(
    folder: Path = typer.Argument(..., help="Shard directory written by `fvlm precompute` (with manifest.json)."),
    repo_id: str = typer.Option(..., "--repo-id", help="Hub dataset repo, owner/name (created if missing)."),
    path_in_repo: str = typer.Option("", "--path-in-repo", help="Folder inside the repo (default: its root)."),
    private: Optional[bool] = typer.Option(None, "--private/--public", help="Visibility of a new repo (default: "
                                           "its owner's default); an existing repo that differs is refused."),
    per_commit: int = typer.Option(8, "--per-commit", help="Shards per Hub commit (a rerun resumes after the last one)."),
    json_out: bool = JsonOpt,
) -> None:
    """Upload the shards, then the manifest, to a Hub dataset repo; shards already there are skipped, so a rerun
    after a failure resumes. Then train anywhere with data.train=[{path: hf://datasets/OWNER/NAME}].
    Token: HF_TOKEN or `hf auth login`; HF_ENDPOINT is honoured."""
    import json

    from fvlm_cli.data.publish import publish_shards
    from fvlm_cli.release.upload import require_token

    token = require_token()
    out = publish_shards(folder, repo_id, token=token, path_in_repo=path_in_repo, private=private,
                         per_commit=per_commit, log=lambda m: typer.echo(m, err=True))
    if json_out:
        typer.echo(json.dumps(out))
    else:
        typer.echo(f"{out['uploaded']} shard(s) uploaded, {out['skipped']} already there; train from {out['url']}")
