"""Metrics: a console line, metrics.jsonl, optional wandb, PNG curves in the run dir."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def _fmt(rec: dict, total: int) -> str:
    rec = {k: (float("nan") if v is None and k in ("loss", "grad_norm") else v) for k, v in rec.items()}
    rec = {k: v for k, v in rec.items() if v is not None}
    parts = [f"step {rec['step']}/{total}"]
    if "loss" in rec:
        parts.append(f"loss {rec['loss']:.4f}")
    lr = [v for k, v in rec.items() if k.startswith("lr/")]
    if lr:
        parts.append(f"lr {max(lr):.2e}")
    if "grad_norm" in rec:
        parts.append(f"gnorm {rec['grad_norm']:.2f}")
    if "samples_per_s" in rec and "frames_per_s" in rec:
        parts.append(f"{rec['samples_per_s']:.1f} samples/s {rec['frames_per_s']:.0f} frames/s {rec['tokens_per_s']:.0f} tok/s")
    if rec.get("mfu") is not None:
        parts.append(f"MFU {100 * rec['mfu']:.1f}%")
    if "memory_gb" in rec:
        parts.append(f"mem {rec['memory_gb']:.2f} GB")
    if "rewards/accuracies" in rec:
        parts.append(f"reward acc {rec['rewards/accuracies']:.2f} margin {rec['rewards/margins']:.3f}")
    vals = [f"{k[4:]} {v:.4f}" for k, v in rec.items() if k.startswith("val/") and isinstance(v, float)]
    parts += vals
    return " | ".join(parts)


class MetricsLogger:
    def __init__(self, run_dir: Path, *, enabled: bool = True, quiet: bool = False, wandb_cfg=None):
        self.enabled = enabled
        self.quiet = quiet
        self.run_dir = Path(run_dir)
        self.last: dict = {}
        self._wandb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._f = open(self.run_dir / "metrics.jsonl", "a")
        if wandb_cfg is not None:
            import wandb  # off unless asked; WANDB_MODE=offline works

            from fvlm_cli import config as cfglib

            self._wandb = wandb.init(project=wandb_cfg.train.wandb_project, dir=str(self.run_dir),
                                     config=cfglib.to_dict(wandb_cfg), name=self.run_dir.name)
        from rich.console import Console

        self._console = Console(stderr=True, highlight=False)

    def log(self, rec: dict, total: int) -> None:
        if not self.enabled:
            return
        rec = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()}
        self.last.update({k: v for k, v in rec.items() if v is not None})
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in rec.items() if isinstance(v, (int, float))}, step=rec["step"])
        if not self.quiet:
            line = _fmt(rec, total)
            if self._console.is_terminal:
                self._console.print(line)
            else:
                print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        self._f.close()
        if self._wandb is not None:
            self._wandb.finish()
        plot_run(self.run_dir)


def truncate_metrics(run_dir: Path, step: int) -> int:
    """Drop the metrics.jsonl rows after `step` (a resume from checkpoint `step` logs them again). Returns how many."""
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return 0
    keep, dropped = [], 0
    for line in p.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:  # a line cut by the kill
            dropped += 1
            continue
        if rec.get("step", 0) <= step:
            keep.append(line)
        else:
            dropped += 1
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text("".join(x + "\n" for x in keep))
    tmp.replace(p)
    return dropped


def read_metrics(run_dir: Path) -> list[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def plot_run(run_dir: Path) -> list[Path]:
    """loss.png (train + validation per mode) and lr.png in RUN/plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(run_dir)
    if not recs:
        return []
    out = Path(run_dir) / "plots"
    out.mkdir(exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    tr = [(r["step"], r["loss"]) for r in recs if r.get("loss") is not None]
    if tr:
        ax.plot(*zip(*tr), label="train")
    for key in sorted({k for r in recs for k in r if k.startswith("val/loss_")}):
        pts = [(r["step"], r[key]) for r in recs if r.get(key) is not None]
        ax.plot(*zip(*pts), marker="o", label=key)
    ax.set_xlabel("step"); ax.set_ylabel("loss"); ax.legend(); ax.grid(alpha=0.3)
    fig.tight_layout(); fig.savefig(out / "loss.png", dpi=100); plt.close(fig)
    paths.append(out / "loss.png")
    fig, ax = plt.subplots(figsize=(6, 3))
    for key in sorted({k for r in recs for k in r if k.startswith("lr/")}):
        pts = [(r["step"], r[key]) for r in recs if r.get(key) is not None]
        ax.plot(*zip(*pts), label=key)
    ax.set_xlabel("step"); ax.set_ylabel("learning rate"); ax.set_yscale("log"); ax.legend(); ax.grid(alpha=0.3)
    fig.tight_layout(); fig.savefig(out / "lr.png", dpi=100); plt.close(fig)
    paths.append(out / "lr.png")
    return paths
