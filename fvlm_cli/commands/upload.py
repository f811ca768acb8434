"""`fvlm upload RUN_OR_CHECKPOINT --repo-id ID`: export a model folder with its model card and push it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fvlm_cli.commands._common import JsonOpt


def upload(
    source: Path = typer.Argument(..., help="Run dir (its best, else latest checkpoint), checkpoint or model folder."),
    repo_id: str = typer.Option(..., "--repo-id", help="Hub model repo, owner/name (created if missing)."),
    private: Optional[bool] = typer.Option(None, "--private/--public", help="Visibility of a new repo (default: "
                                           "its owner's default); an existing repo that differs is refused."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Export and validate only; nothing is uploaded."),
    out: Optional[Path] = typer.Option(None, "--out", help="Export folder (default: RUN/export, else ./export-<repo name>)."),
    commit_message: Optional[str] = typer.Option(None, "--commit-message", help="Hub commit message."),
    license: Optional[str] = typer.Option(None, "--license", help="Licence id for the card (default: the config's, else apache-2.0)."),
    json_out: bool = JsonOpt,
) -> None:
    """Export a run/checkpoint as a model folder (weights, tokenizer, model card, configs, results), check
    that it reloads to the same logits, then create the Hub repo and upload it. Token: HF_TOKEN or `hf auth login`;
    HF_ENDPOINT is honoured."""
    import json

    from fvlm_cli.release.upload import check_repo_id, export_model, hub_endpoint, push_folder, require_token

    def log(msg: str) -> None:
        typer.echo(msg, err=True)

    check_repo_id(repo_id)
    token = None if dry_run else require_token()  # before the export, and before any network call
    exp = export_model(source, repo_id, out, license=license, log=log)
    worst = max(exp.max_diff.values(), default=0.0)
    log(f"validated: the export reloads to the same logits in {len(exp.max_diff)} modes (max |Δ| {worst:.1e}); "
        f"{exp.num_parameters:,} parameters, {len(exp.stages)} training stage(s)")
    commit_url = None
    if dry_run:
        log(f"dry run: nothing uploaded; the model folder is {exp.folder}")
    else:
        commit_url = push_folder(exp.folder, repo_id, private=private, commit_message=commit_message, token=token, log=log)
    if json_out:
        typer.echo(json.dumps({"folder": str(exp.folder), "repo_id": repo_id, "dry_run": dry_run,
                               "endpoint": hub_endpoint(), "commit_url": commit_url, "max_diff": exp.max_diff,
                               "num_parameters": exp.num_parameters, "stages": [s.name for s in exp.stages]}))
    elif commit_url:
        typer.echo(commit_url)
    else:
        typer.echo(str(exp.folder))
