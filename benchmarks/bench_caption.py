"""Dataset-scale captioning speed on CPU (SPEC §9): captions/s of `fvlm caption` on the tiny preset, decoding
in the model's process (--workers 0) against background DataLoader workers (--workers 2), plus how long the
model sat waiting for decoded inputs. Also --gpus 2 --device cpu (two model processes, one core each).

    python benchmarks/bench_caption.py [--videos 24] [--seconds 20] [--max-new-tokens 16] [--quick]

Writes benchmarks/results/caption_tiny_cpu.json and prints a table. Each configuration runs the real command
(`python -m fvlm_cli caption DIR --out ... --json`), so model loading is included in `wall_s`; `captions_per_s`
counts from the first caption to the last (steady state), from the `seconds` the run reports.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "caption_tiny_cpu.json"
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_precompute import write_video  # noqa: E402  (textured 30 fps H.264: decoding costs what footage costs)


def run(folder: Path, out: Path, *args: str, max_new_tokens: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "fvlm_cli", "caption", str(folder), "--model", "tiny", "--device", "cpu",
                        "--out", str(out), "--max-new-tokens", str(max_new_tokens), "--batch-size", "8",
                        "--no-progress", *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    return {"args": list(args), "captions": len(rows), "wall_s": round(wall, 2),
            "captions_per_s": round(len(rows) / wall, 3), "summary": r.stderr.strip().splitlines()[-1]}


def in_process(folder: Path, workers: int, max_new_tokens: int) -> dict:
    """The library loop: model busy vs waiting for decode (caption_units' Summary)."""
    import torch

    from fvlm_cli.infer.captioner import caption_units
    from fvlm_cli.infer.inputs import resolve
    from fvlm_cli.infer.settings import CaptionConfig, GenerateConfig
    from fvlm_cli.model.build import load_model

    torch.set_num_threads(1)
    lm = load_model("tiny", device="cpu")
    cfg = CaptionConfig(GenerateConfig(max_new_tokens=max_new_tokens), batch_size=8, workers=workers)
    s = caption_units(lm, resolve([str(folder)]).units, cfg, lambda rec: None)
    return {"workers": workers, "captions": s.captioned, "wall_s": round(s.wall_s, 2),
            "captions_per_s": round(s.captioned / s.wall_s, 3), "model_busy_s": round(s.model_s, 2),
            "model_waiting_for_decode_s": round(s.wait_s, 2), "model_idle_fraction": round(s.wait_s / s.wall_s, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.videos, args.seconds = 8, 8
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "videos"
        folder.mkdir()
        for i in range(args.videos):
            write_video(folder / f"v{i:03d}.mp4", args.seconds, (320, 240), 30)
        loop = [in_process(folder, w, args.max_new_tokens) for w in (0, 2)]
        cli = []
        for name, extra in (("workers=0", ["--workers", "0"]), ("workers=2", ["--workers", "2"]),
                            ("gpus=2 (2 CPU processes), workers=1", ["--gpus", "2", "--workers", "1"])):
            cli.append({"config": name, **run(folder, Path(tmp) / f"{len(cli)}.jsonl", *extra,
                                              max_new_tokens=args.max_new_tokens)})
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_avg_at_end": os.getloadavg()},
              "videos": {"count": args.videos, "seconds": args.seconds, "size": "320x240", "fps": 30,
                         "frames_per_caption": min(args.seconds, 64)},
              "model": "tiny (random init), greedy, batch 8, autoregressive", "max_new_tokens": args.max_new_tokens,
              "library_loop": loop, "cli": cli}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print("library loop (model load excluded):")
    for r in loop:
        print(f"  workers={r['workers']}: {r['captions_per_s']:.2f} captions/s, model waiting for decode "
              f"{r['model_waiting_for_decode_s']:.1f} of {r['wall_s']:.1f} s ({100 * r['model_idle_fraction']:.0f}%)")
    print("fvlm caption (model load included):")
    for r in cli:
        print(f"  {r['config']}: {r['captions_per_s']:.2f} captions/s over {r['wall_s']:.1f} s")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
