"""`fvlm speedrun`: the offline end-to-end default."""

from __future__ import annotations

from typing import List, Optional

import typer

from fvlm_cli.commands._common import DeviceOpt, SetOpt


def speedrun(
    out: str = typer.Option("runs/speedrun", "--out", "-o", help="Run directory (re-running resumes finished steps)."),
    preset: str = typer.Option("tiny", "--preset", help="Model preset (tiny runs offline on 2 CPU cores in about five minutes)."),
    n_videos: int = typer.Option(400, "--videos", help="Synthetic training videos."),
    steps_scale: float = typer.Option(1.0, "--steps-scale", help="Multiply every stage's step count (0.1 = a quick smoke run)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Precompute worker processes."),
    sets: Optional[List[str]] = SetOpt,
    device: str = DeviceOpt,
) -> None:
    """Synthetic data -> precompute -> stage 1 -> stage 2 -> DPO -> bench (3 modes) -> captions -> report.md."""
    from fvlm_cli.speedrun import run_speedrun

    info = run_speedrun(out, preset, n_videos=n_videos, steps_scale=steps_scale, workers=workers, device=device,
                        overrides=sets)
    typer.echo(f"report: {info['report']} ({info['seconds'] / 60:.1f} min)")
