"""`fvlm train --stage N` and the shared option handling of `fvlm dpo`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fvlm_cli.commands._common import ConfigOpt, PrintConfigOpt, SetOpt, flag
from fvlm_cli.settings import RunConfig


# flag -> RunConfig key: the defaults live once, in fvlm_cli/settings.py
TRAIN_FLAGS = {"stage": "train.stage", "out": "out_dir", "init_from": "train.init_from", "steps": "train.steps",
               "device": "train.device", "dtype": "train.dtype"}


def _launch_torchrun(gpus: int) -> None:
    """Re-run this very command under torchrun with N processes (one per GPU)."""
    import os
    import subprocess
    import sys

    args = []
    skip = False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a == "--gpus":
            skip = True
            continue
        if a.startswith("--gpus="):
            continue
        args.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", "-m", "fvlm_cli", *args]
    env = os.environ.copy()
    # torchrun SIGKILLs the ranks 30 s after passing them a SIGTERM by default: too short for "finish the step (DDP:
    # up to the next log step), then save"; the scheduler's own kill deadline still applies on top
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "300")
    raise SystemExit(_wait_forwarding_signals(subprocess.Popen(cmd, env=env)))


def _wait_forwarding_signals(proc) -> int:
    """Wait for the torchrun child, passing SIGTERM / SIGUSR1 on to it as SIGTERM (torchrun hands SIGTERM to the ranks,
    which save a checkpoint and stop; a SIGUSR1 would kill torchrun itself, which handles only SIGTERM, SIGINT, SIGHUP
    and SIGQUIT by default): a scheduler's signal to this launcher must reach the training, not kill torchrun and
    orphan the ranks. Ctrl-C reaches the whole terminal process group, torchrun included: keep waiting."""
    import signal

    from fvlm_cli.errors import SIGNALS_RECEIVED

    def forward(signum, frame):
        SIGNALS_RECEIVED.append(signum)
        proc.send_signal(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, forward)
    while True:
        try:
            rc = proc.wait()
            break
        except KeyboardInterrupt:
            continue
    return 143 if SIGNALS_RECEIVED and rc != 0 else rc


def run_training(ctx: typer.Context, config, sets, resume, print_cfg, gpus, dpo) -> None:
    from fvlm_cli import config as cfglib
    from fvlm_cli.commands._common import flag_values

    if gpus and gpus > 1:
        _launch_torchrun(gpus)
    from fvlm_cli.train.loop import load_run_config, train as train_loop

    cfg = load_run_config(str(config) if config else None, list(sets or []), flag_values(ctx, TRAIN_FLAGS))
    if cfg.train.stage not in (1, 2, 3):
        from fvlm_cli.errors import ConfigError

        raise ConfigError(f"--stage {cfg.train.stage}: stages are 1 (captioning), 2 (VL-SFT), 3 (video SFT)")
    if print_cfg:
        typer.echo(cfglib.dump(cfg), nl=False)
        return
    if not cfg.data.train:
        from fvlm_cli.errors import ConfigError

        raise ConfigError("data.train is empty: give shard sets in the config or --set 'data.train=[{path: DIR}]'")
    summary = train_loop(cfg, dpo=dpo, resume=resume)
    typer.echo(f"done: {summary['run_dir']} (final loss {summary['final_loss']}, skipped steps {summary['skipped_steps']})")


def train(
    ctx: typer.Context,
    stage: Optional[int] = flag(RunConfig, "train.stage", "--stage", "-s"),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
    out: Optional[str] = flag(RunConfig, "out_dir", "--out", "-o"),
    init_from: Optional[str] = flag(RunConfig, "train.init_from", "--init-from"),
    steps: Optional[int] = flag(RunConfig, "train.steps", "--steps"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped."),
    gpus: int = typer.Option(0, "--gpus", help="Launch N processes with torchrun (one per GPU)."),
    device: Optional[str] = flag(RunConfig, "train.device", "--device"),
    dtype: Optional[str] = flag(RunConfig, "train.dtype", "--dtype"),
    print_config: bool = PrintConfigOpt,
) -> None:
    """Train stage N (SFT) from a YAML config; checkpoints, metrics.jsonl and plots go to the run dir."""
    run_training(ctx, config, sets, resume, print_config, gpus, dpo=False)
