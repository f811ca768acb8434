"""MCQ scoring speed (SPEC §9): seconds per question, fast path vs naive, all 3 modes x K options.

    fast   eval/mcq.score_fast: DINO once per question for all options and modes, the visual + question prefix once
           per mode, all options scored from the prefix's KV cache in one batched step (questions batched too).
    naive  eval/mcq.score_naive: a full forward (DINO re-encoded) for every option x mode, one question at a time:
           what the reference implementation did (SPEC §10).
    fast (batch 1) is the fast path one question at a time: the gain from caching alone.

The inputs are synthetic (random frames, random prompt ids, options = one token + <|im_end|>) and the weights
random (pretrained=false: nothing is downloaded); speed does not depend on either. Both paths score the same
questions and their mean NLLs are compared (max |difference| in the JSON).

    python benchmarks/bench_eval.py                                   # tiny preset, CPU -> results/bench_eval_cpu.json
    python benchmarks/bench_eval.py --preset fvlm-135m --device cuda --frames 16 --questions 32

Target: fast >= 5x fewer seconds per question than naive.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fvlm_cli.eval import mcq  # noqa: E402
from fvlm_cli.model.build import build_model, preset  # noqa: E402
from fvlm_cli.model.vlm import MODES  # noqa: E402


def make_questions(model, n: int, frames: int, options: int, prompt_tokens: int, seed: int = 0) -> list[mcq.Batch]:
    """n single-question batches (frames [1, T, 3, S, S], prompt [1, prompt_tokens], K options of 2 tokens)."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.llm.config.vocab_size
    S = model.image_size
    out = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (1, prompt_tokens), generator=g)
        conts = [[[int(torch.randint(3, vocab, (1,), generator=g)), 2] for _ in range(options)]]
        out.append(mcq.Batch(torch.randn(1, frames, 3, S, S, generator=g), torch.ones(1, frames, dtype=torch.bool),
                             ids, torch.ones_like(ids), torch.zeros(1, dtype=torch.long), conts))
    return out


def collate(batches: list[mcq.Batch]) -> mcq.Batch:
    return mcq.Batch(torch.cat([b.frames for b in batches]), torch.cat([b.frame_mask for b in batches]),
                     torch.cat([b.input_ids for b in batches]), torch.cat([b.attention_mask for b in batches]),
                     torch.cat([b.visual_pos for b in batches]), [c for b in batches for c in b.continuations])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_fast(model, questions, batch_size, device):
    """Seconds for all questions, and the mean NLLs per mode [question][option]."""
    means = {m: [] for m in MODES}
    sync(device)
    t0 = time.perf_counter()
    for i in range(0, len(questions), batch_size):
        b = collate(questions[i : i + batch_size]).to(device)
        res = mcq.score_fast(model, b, MODES)
        for m in MODES:
            means[m] += [[s / n for s, n in zip(ss, nn)] for ss, nn in zip(res[m]["sum_nll"], res[m]["n_tokens"])]
    sync(device)
    return time.perf_counter() - t0, means


def run_naive(model, questions, device):
    means = {m: [] for m in MODES}
    sync(device)
    t0 = time.perf_counter()
    for q in questions:
        res = mcq.score_naive(model, q.to(device), MODES)
        for m in MODES:
            means[m] += [[s / n for s, n in zip(ss, nn)] for ss, nn in zip(res[m]["sum_nll"], res[m]["n_tokens"])]
    sync(device)
    return time.perf_counter() - t0, means


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny", help="model preset (random weights, no download)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--frames", type=int, default=8, help="frames per question (an image is 8)")
    ap.add_argument("--options", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8, help="questions per fast-path batch")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each path (the median is reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/bench_eval_<device type>.json)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(preset(args.preset, ["pretrained=false"])).to(device).eval()
    if args.dtype == "bf16":
        model.to(torch.bfloat16)
    questions = make_questions(model, args.questions, args.frames, args.options, args.prompt_tokens)

    with torch.no_grad():  # warm-up: allocator, kernels, lazy inits
        run_fast(model, questions[:2], 2, device)
        run_naive(model, questions[:1], device)
        fast_s, fast1_s, naive_s = [], [], []
        for _ in range(args.repeats):
            t, fast_means = run_fast(model, questions, args.batch_size, device)
            fast_s.append(t)
            t, _ = run_fast(model, questions, 1, device)
            fast1_s.append(t)
            t, naive_means = run_naive(model, questions, device)
            naive_s.append(t)

    diff = max(abs(a - b) for m in MODES for qa, qb in zip(fast_means[m], naive_means[m]) for a, b in zip(qa, qb))
    per_q = {name: statistics.median(v) / args.questions for name, v in
             (("fast", fast_s), ("fast_batch1", fast1_s), ("naive", naive_s))}
    result = {
        "benchmark": "mcq scoring, seconds per question (3 modes x K options)",
        "preset": args.preset, "device": str(device), "dtype": args.dtype,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "questions": args.questions, "frames": args.frames, "options": args.options, "prompt_tokens": args.prompt_tokens,
        "batch_size": args.batch_size, "repeats": args.repeats, "modes": list(MODES),
        "seconds_per_question": per_q,
        "speedup": per_q["naive"] / per_q["fast"],
        "speedup_batch1": per_q["naive"] / per_q["fast_batch1"],
        "max_abs_mean_nll_diff": diff,
        "target_speedup": 5.0,
        "runs_s": {"fast": fast_s, "fast_batch1": fast1_s, "naive": naive_s},
    }
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"bench_eval_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{args.preset} on {device} ({args.dtype}, {torch.get_num_threads()} threads): {args.questions} questions, "
          f"{args.frames} frames, {args.options} options, 3 modes")
    print(f"  {'path':<22}{'s/question':>12}{'vs naive':>10}")
    for name, label in (("naive", "naive (re-encode)"), ("fast_batch1", "fast, batch 1"),
                        ("fast", f"fast, batch {args.batch_size}")):
        print(f"  {label:<22}{per_q[name]:>12.4f}{per_q['naive'] / per_q[name]:>9.1f}x")
    print(f"  max |mean NLL fast - naive| = {diff:.2e}; speed-up {result['speedup']:.1f}x "
          f"(target >= 5x: {'met' if result['speedup'] >= 5 else 'NOT met'}) -> {out}")


if __name__ == "__main__":
    main()
