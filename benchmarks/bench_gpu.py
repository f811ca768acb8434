"""GPU training figures (SPEC §9.1): one prepared run of at most ~8 minutes on one GPU.

    python benchmarks/bench_gpu.py [--quick] [--budget-s 480]     # -> results/gpu_<device>.json + a markdown table

Rows (bf16 autocast, random-init weights: same cost as real ones, nothing downloaded beyond the configs' shapes):
  fvlm-135m, 8 frames,  B=32, compile off / on (train.compile=encoder: DINO patch pass + query walk)
  fvlm-135m, 64 frames, B=4,  compile off / on
  fvlm-1.7b, 8 frames,  B=8,  gradient checkpointing (non-reentrant), compile off
  fvlm-135m, 8 frames,  B=32, train.compile=model (the whole training forward; last, so the rows above come first)
Each row is its own `fvlm profile train` process (`--set profile.split=false`: whole steps, no inner syncs), so peak
memory belongs to that row. Reported: samples/s, frames/s, MFU counting the vision FLOPs (train/flops.py), peak
memory (torch.cuda.max_memory_allocated), first-step seconds (compile time when compile is on). A row that fails
(OOM, timeout) is recorded with its error and the rest still run; rows are skipped when the budget is spent.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

ROWS = [
    ("135m T=8 B=32", ["--preset", "fvlm-135m", "-b", "32", "-T", "8"], "off"),
    ("135m T=8 B=32 compile", ["--preset", "fvlm-135m", "-b", "32", "-T", "8"], "encoder"),
    ("135m T=64 B=4", ["--preset", "fvlm-135m", "-b", "4", "-T", "64"], "off"),
    ("135m T=64 B=4 compile", ["--preset", "fvlm-135m", "-b", "4", "-T", "64"], "encoder"),
    ("1.7b T=8 B=8 grad-ckpt", ["--preset", "fvlm-1.7b", "-b", "8", "-T", "8", "--set", "model.gradient_checkpointing=true"], "off"),
    ("135m T=8 B=32 compile=model", ["--preset", "fvlm-135m", "-b", "32", "-T", "8"], "model"),
]


def run_row(name: str, args: list[str], compile: str, steps: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = [sys.executable, "-m", "fvlm_cli", "profile", "train", *args, "-S", "128", "--device", "cuda",
               "--dtype", "bf16", "--steps", str(steps), "--warmup", "2" if compile == "off" else "3",
               "--set", "profile.split=false", "--set", f"train.compile={compile}",
               "--set", "profile.answer_tokens=32", "--out", str(out)]
        t0 = time.perf_counter()
        try:
            r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"row": name, "error": f"timeout after {timeout:.0f} s", "command": " ".join(cmd[2:])}
        if r.returncode != 0:
            return {"row": name, "error": r.stderr[-1500:], "command": " ".join(cmd[2:])}
        res = json.loads(out.read_text())
        keep = ("device_name", "step_s", "first_step_s", "samples_per_s", "frames_per_s", "tokens_per_s", "mfu",
                "achieved_tflops", "peak_memory_gb", "activation_gb", "parameters", "compile_s_estimate")
        return {"row": name, "compile": compile, "wall_s": time.perf_counter() - t0, "command": " ".join(cmd[2:]),
                **{k: res.get(k) for k in keep}}


def table(rows: list[dict]) -> str:
    lines = ["| run | samples/s | frames/s | MFU (vision incl.) | peak memory GB | first step s |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['row']} | failed: {r['error'].strip().splitlines()[-1][:60]} | | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        lines.append(f"| {r['row']} | {r['samples_per_s']:.1f} | {r['frames_per_s']:.0f} | {mfu} | "
                     f"{r['peak_memory_gb']:.1f} | {r['first_step_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 timed steps per row instead of 10")
    ap.add_argument("--budget-s", type=float, default=480, help="stop starting rows after this many seconds")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device")
    t0 = time.perf_counter()
    rows = []
    for name, a, comp in ROWS:
        left = args.budget_s - (time.perf_counter() - t0)
        if left < 30:
            rows.append({"row": name, "error": "skipped: budget spent"})
            continue
        rows.append(run_row(name, a, comp, 3 if args.quick else 10, timeout=left))
        print(json.dumps(rows[-1]), flush=True)
    dev = torch.cuda.get_device_name(0)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"gpu_{dev.replace(' ', '_').lower()}.json"
    path.write_text(json.dumps({"device": dev, "torch": torch.__version__, "rows": rows}, indent=1) + "\n")
    print(table(rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
