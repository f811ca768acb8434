"""`fvlm dpo`: preference alignment from DPO shards."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fvlm_cli.commands._common import ConfigOpt, DeviceOpt, DtypeOpt, PrintConfigOpt, SetOpt


def dpo(
    config: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Run directory (overrides out_dir)."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="The SFT model to align (must exist)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps."),
    precompute_ref: bool = typer.Option(False, "--precompute-ref", help="Compute the reference log-probs in one pass before training (RUN/ref_logps.json) and free the reference model."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped."),
    gpus: int = typer.Option(0, "--gpus", help="Launch N processes with torchrun."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    print_config: bool = PrintConfigOpt,
) -> None:
    """DPO (sigmoid, beta from config) against a frozen copy of the initial model; TRL metric names."""
    from fvlm_cli.commands.train import run_training

    sets = list(sets or [])
    if precompute_ref:
        sets.append("dpo.reference=precomputed")
    run_training(config, sets, None, out, device, dtype, init_from, steps, resume, print_config, gpus, dpo=True)
