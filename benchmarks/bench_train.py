"""Training / inference / loader figures and the optimisation switches, through `fvlm profile` (SPEC §9).

    python benchmarks/bench_train.py record     # results/profile_{train_tiny,train_135m,infer_tiny,data,bench_tiny}_cpu.json
                                                #   + results/help_time.json
    python benchmarks/bench_train.py switches   # results/bench_train_switches_cpu.json: each switch on and off
    python benchmarks/bench_train.py help-time

Every measurement is its own `python -m fvlm_cli profile ...` process, so peak RSS belongs to that run alone and
nothing (compiled graphs, allocator state) carries over. Switch comparisons alternate the variants over
`--rounds` rounds and keep each variant's best (lowest) median step time: a shared machine's load then hits
every variant alike. `--threads 1` (the default here) because on a loaded 2-core machine torch's default of
one thread per core oversubscribes the cores and a tiny step took 70x longer (docs/LOG.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

TINY = ["--preset", "tiny", "--batch-size", "8", "--frames", "8", "--text-tokens", "64", "--steps", "30", "--warmup", "3"]
M135 = ["--preset", "fvlm-135m", "--batch-size", "2", "--frames", "8", "--text-tokens", "64", "--steps", "3", "--warmup", "1"]
M135_LONG = M135 + ["--text-tokens", "256", "--set", "profile.answer_tokens=32"]  # SFT-like: long prompt, short answer
SFT = ["--set", "profile.answer_tokens=16"]
DATA = ["--preset", "tiny", "--set", "model.image_size=224", "--batch-size", "8", "--frames", "16", "--steps", "12",
        "--warmup", "2", "--set", "profile.samples=160"]

# (comparison, base args, {variant: extra args}); the first variant is the library's default / the baseline
SWITCHES = [
    ("coarse pass: visual-only vs full sequence (tiny)", TINY, {"visual": [], "full": ["--variant", "full_coarse_pass"]}),
    ("coarse pass: visual-only vs full sequence (135m)", M135, {"visual": [], "full": ["--variant", "full_coarse_pass"]}),
    ("coarse pass: visual-only vs full sequence (135m, S=256)", M135_LONG,
     {"visual": [], "full": ["--variant", "full_coarse_pass"]}),
    ("lm_head: targets vs all positions (tiny, 16 answer tokens)", TINY + SFT,
     {"targets": [], "all": ["--variant", "lm_head_all"]}),
    ("lm_head: targets vs all positions (135m, 16 answer tokens)", M135 + SFT,
     {"targets": [], "all": ["--variant", "lm_head_all"]}),
    ("DINO: every frame slot (static shapes) vs real frames only (tiny, ragged)", TINY + ["--set", "profile.ragged=true"],
     {"slots": [], "real only": ["--variant", "dino_real_only"]}),
    ("DINO: every frame slot (static shapes) vs real frames only (135m, ragged)", M135 + ["--set", "profile.ragged=true"],
     {"slots": [], "real only": ["--variant", "dino_real_only"]}),
    ("LLM attention: sdpa vs eager (tiny)", TINY, {"sdpa": [], "eager": ["--set", "model.attn_implementation=eager"]}),
    ("LLM attention: sdpa vs eager (135m)", M135, {"sdpa": [], "eager": ["--set", "model.attn_implementation=eager"]}),
    ("torch.compile of the query walk (tiny)", TINY, {"eager": [], "compiled": ["--set", "profile.compile=query"]}),
    ("gradient checkpointing (135m, B=2 x 8 frames)", M135,
     {"off": [], "on": ["--set", "model.gradient_checkpointing=true"]}),
    ("torch CPU threads: 1 vs 2 on 2 cores (tiny; depends on other load)", TINY,
     {"1 thread": [], "2 threads": ["--set", "profile.threads=2"]}),
    ("frame-budget batching (loader, 224 px, 4-16 frames, 2 workers)", DATA + ["--set", "profile.workers=[2]"],
     {"batch 8": [], "budget 64": ["--set", "data.frame_budget=64"]}),
]
GPU_ONLY = {
    "fused AdamW": "optim.fused (default true) -> build_optimizer passes fused=True on CUDA only; not measurable on CPU",
    "TF32": "train.tf32 (default true) -> profile sets torch.backends.cuda.matmul/cudnn.allow_tf32 as the loop does",
    "pinned memory / non_blocking": "profile.pin_memory=true pins the host batch; to_device copies non_blocking; "
                                    "a no-op on CPU",
}


def profile(target: str, args: list[str], threads: int) -> dict:
    """One `fvlm profile` process; `--variant NAME` in args binds a reference variant (benchmarks/profile_variant.py)."""
    entry = [sys.executable, "-m", "fvlm_cli", "profile"]
    if "--variant" in args:
        i = args.index("--variant")
        entry = [sys.executable, str(ROOT / "benchmarks" / "profile_variant.py"), args[i + 1]]
        args = args[:i] + args[i + 2:]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = [*entry, target, "--set", f"profile.threads={threads}", *args,
               "--out", str(out)]  # later --set wins: a variant may change the threads
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
        return json.loads(out.read_text())


def metric(res: dict) -> float:
    """Lower is better: a training step's median seconds, or seconds per loaded sample."""
    if res["target"] == "data":
        (row,) = res["workers"].values()
        return 1 / row["samples_per_s"]
    return res["step_s"]


def switches(args) -> None:
    todo = SWITCHES if not args.only else [s for s in SWITCHES if args.only in s[0]]
    rows = []
    for name, base, variants in todo:
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for _ in range(args.rounds):
            for v, extra in variants.items():
                target = "data" if base is DATA or base[:len(DATA)] == DATA else "train"
                runs[v].append(profile(target, base + extra, args.threads))
                print(f"  {name} / {v}: {metric(runs[v][-1]):.4f}", file=sys.stderr)
        best = {v: min(rs, key=metric) for v, rs in runs.items()}
        first = next(iter(variants))
        row = {"comparison": name, "args": base, "variants": {}}
        for v, res in best.items():
            entry = {"extra_args": variants[v], "metric_s": metric(res), "runs_metric_s": [metric(r) for r in runs[v]],
                     "relative_to_" + first: metric(res) / metric(best[first]),
                     "peak_memory_gb": res.get("peak_memory_gb"), "load_average_1m": res.get("load_average_1m")}
            if res["target"] == "train":
                entry.update(step_s=res["step_s"], samples_per_s=res["samples_per_s"], split_s=res["split_s"],
                             first_step_s=res["first_step_s"], loss_first=res["loss_first"],
                             activation_gb=res["activation_gb"], threads=res["threads"])
            else:
                (w,) = res["workers"].values()
                entry.update(samples_per_s=w["samples_per_s"], frames_per_s=w["frames_per_s"],
                             mean_batch_size=w["mean_batch_size"], padded_frame_fraction=w["padded_frame_fraction"])
            row["variants"][v] = entry
        rows.append(row)
        print(f"{name}: " + ", ".join(f"{v} {e['metric_s']:.4f}s ({e['relative_to_' + first]:.2f}x)"
                                      for v, e in row["variants"].items()))
    path = RESULTS / "bench_train_switches_cpu.json"
    if args.only and path.exists():  # update those comparisons in place, keep the others
        fresh = {r["comparison"]: r for r in rows}
        old = {r["comparison"]: r for r in json.loads(path.read_text())["comparisons"]}
        rows = [fresh.get(name) or old[name] for name, _, _ in SWITCHES if name in fresh or name in old]
    out = {"threads": args.threads, "rounds": args.rounds, "statistic": "best of rounds (alternating) of each run's "
           "median step (data: seconds per sample)", "cpus": os.cpu_count(), "comparisons": rows, "gpu_only": GPU_ONLY}
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


def help_time(repeats: int = 10) -> dict:
    exe = shutil.which("fvlm")
    cmds = {"fvlm --help": [exe, "--help"]} if exe else {}
    cmds["python -m fvlm_cli --help"] = [sys.executable, "-m", "fvlm_cli", "--help"]
    out = {"repeats": repeats, "statistic": "median", "target_s": 0.5, "load_average_1m": os.getloadavg()[0]}
    for name, cmd in cmds.items():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True)
            times.append(time.perf_counter() - t0)
        out[name] = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs_s": times}
    (RESULTS / "help_time.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v["median_s"] for k, v in out.items() if isinstance(v, dict)}))
    return out


def record(args) -> None:
    jobs = [
        ("profile_train_tiny_cpu.json", "train", ["--preset", "tiny", "--batch-size", "8", "--frames", "8",
                                                 "--text-tokens", "64", "--steps", "20", "--warmup", "3"]),
        ("profile_train_135m_cpu.json", "train", M135[:-4] + ["--steps", "3", "--warmup", "1"]),
        ("profile_infer_tiny_cpu.json", "infer", ["--preset", "tiny", "--batch-size", "4", "--frames", "8",
                                                 "--text-tokens", "64", "--steps", "10", "--warmup", "2",
                                                 "--set", "profile.max_new_tokens=32"]),
        ("profile_data_cpu.json", "data", DATA),
        ("profile_bench_tiny_cpu.json", "bench", ["--preset", "tiny", "--batch-size", "8", "--frames", "8",
                                                 "--text-tokens", "64", "--steps", "3", "--warmup", "1"]),
    ]
    for name, target, a in jobs:
        if args.only and args.only not in name:
            continue
        t0 = time.perf_counter()
        res = profile(target, a, args.threads)
        res["command"] = "fvlm profile " + " ".join([target, "--set", f"profile.threads={args.threads}", *a])
        (RESULTS / name).write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {name} ({time.perf_counter() - t0:.0f} s)")
    if not args.only or "help" in args.only:
        help_time()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["record", "switches", "help-time"])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per run (0 = torch's default)")
    ap.add_argument("--rounds", type=int, default=2, help="switches: alternating rounds per comparison")
    ap.add_argument("--only", default="", help="only jobs/comparisons whose name contains this")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.what == "record":
        record(args)
    elif args.what == "switches":
        switches(args)
    else:
        help_time()


if __name__ == "__main__":
    main()
