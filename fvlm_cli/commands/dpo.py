"""`fvlm dpo`: preference alignment from DPO shards."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fvlm_cli.commands._common import ConfigOpt, PrintConfigOpt, SetOpt, flag
from fvlm_cli.settings import RunConfig


def dpo(
    ctx: typer.Context,
    config: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
    out: Optional[str] = flag(RunConfig, "out_dir", "--out", "-o"),
    init_from: Optional[str] = flag(RunConfig, "train.init_from", "--init-from", help="The SFT model to align (must exist)"),
    steps: Optional[int] = flag(RunConfig, "train.steps", "--steps"),
    precompute_ref: bool = typer.Option(False, "--precompute-ref", help="Compute the reference log-probs in one pass before training (RUN/ref_logps.json) and free the reference model."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped."),
    gpus: int = typer.Option(0, "--gpus", help="Launch N processes with torchrun."),
    device: Optional[str] = flag(RunConfig, "train.device", "--device"),
    dtype: Optional[str] = flag(RunConfig, "train.dtype", "--dtype"),
    print_config: bool = PrintConfigOpt,
) -> None:
    """DPO (sigmoid, beta from config) against a frozen copy of the initial model; TRL metric names."""
    from fvlm_cli.commands.train import run_training

    sets = list(sets or [])
    if precompute_ref:
        sets.append("dpo.reference=precomputed")
    run_training(ctx, config, sets, resume, print_config, gpus, dpo=True)
