"""MCQ scoring speed (SPEC §9): seconds per question, fast path vs naive, all 3 modes x K options.

    fast   eval/mcq.score_fast: DINO once per question for all options and modes, the visual + question prefix once
           per mode, all options scored from the prefix's KV cache in one batched step (questions batched too).
    naive  eval/mcq.score_naive: a full forward (DINO re-encoded) for every option x mode, one question at a time:
           what the reference implementation did (SPEC §10).
    fast (batch 1) is the fast path one question at a time: the gain from caching alone.
With --protocol reference the questions are real text (the tiny tokenizer's chat template, 4 lettered options
parsed from the user text) scored by the reference rules: fast = `mcq.score_questions(protocol="reference")`,
naive = a full forward per option x mode of the rendered conversation with CE(ignore_index = pad) (the
original research code's loop).

The inputs are synthetic (random frames, random prompt ids, options = one token + <|im_end|>) and the weights
random (pretrained=false: nothing is downloaded); speed does not depend on either. Both paths score the same
questions and their mean NLLs are compared (max |difference| in the JSON).

    python benchmarks/bench_eval.py                                   # tiny preset, CPU -> results/bench_eval_cpu.json
    python benchmarks/bench_eval.py --preset fvlm-135m --device cuda --frames 16 --questions 32
    python benchmarks/bench_eval.py --protocol reference       # -> results/bench_eval_reference_cpu.json

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


def reference_questions(n: int, frames: int, size: int, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    words = ["red", "green", "blue", "yellow", "circle", "square", "moving left", "moving right"]
    out = []
    for i in range(n):
        opts = [words[(i + k) % len(words)] for k in range(4)]
        user = (f"What is shown in clip {i}?\n" + "\n".join(f"{'ABCD'[k]}. {o}" for k, o in enumerate(opts))
                + "\nAnswer with the option's letter from the given choices directly.")
        clip = (torch.rand(frames, size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
        out.append(mcq.Question(f"q{i}", [{"role": "user", "content": user}], opts, "ABCD"[i % 4], clip))
    return out


def run_reference(model, tok, questions, batch_size, device):
    """Fast path: seconds and scores [mode][question][option]."""
    from types import SimpleNamespace

    from fvlm_cli.settings import ChatConfig, MediaConfig

    lm = SimpleNamespace(model=model, tokenizer=tok, chat=ChatConfig(), media=MediaConfig())
    scores = {m: [] for m in MODES}
    sync(device)
    t0 = time.perf_counter()
    for i in range(0, len(questions), batch_size):
        rows = mcq.score_questions(lm, questions[i : i + batch_size], modes=MODES, methods=["loglik"],
                                   protocol="reference")
        for r in rows:
            scores[r["mode"]].append(r["scores"])
    sync(device)
    return time.perf_counter() - t0, scores


def run_reference_naive(model, tok, questions, device):
    """The original loop: every option x mode a full forward (DINO re-encoded), CE with ignore_index = pad."""
    import torch.nn.functional as F

    from fvlm_cli.data.media import frames_to_tensor
    from fvlm_cli.eval import reference

    scores = {m: [] for m in MODES}
    sync(device)
    t0 = time.perf_counter()
    for q in questions:
        system = {"role": "system", "content": reference.SYSTEM_PROMPT}
        user = {"role": "user", "content": q.messages[0]["content"]}
        prompt_len = len(tok(tok.apply_chat_template([system, user], tokenize=False, add_generation_prompt=True))["input_ids"])
        x = frames_to_tensor(q.frames)[None].to(device)
        for m in MODES:
            per = []
            for _, option in reference.parse_options(user["content"]):
                text = tok.apply_chat_template([system, user, {"role": "assistant", "content": option}], tokenize=False)
                ids = torch.tensor([tok(text)["input_ids"]], device=device)
                logits = model(x, ids, mode=m)["logits"][0]
                ce = F.cross_entropy(logits[prompt_len - 1 : -1], ids[0, prompt_len:], ignore_index=tok.pad_token_id,
                                     reduction="none")
                per.append(float(ce.sum()) / ce.numel())
            scores[m].append(per)
    sync(device)
    return time.perf_counter() - t0, scores


def main_reference(args, model, device) -> None:
    from fvlm_cli.model.tokenizer import load_tokenizer

    tok = load_tokenizer("tiny" if args.preset == "tiny" else model_llm(args.preset))
    questions = reference_questions(args.questions, args.frames, model.image_size)
    with torch.no_grad():
        run_reference(model, tok, questions[:2], 2, device)
        fast_s, naive_s = [], []
        for _ in range(args.repeats):
            t, fast_scores = run_reference(model, tok, questions, args.batch_size, device)
            fast_s.append(t)
            t, naive_scores = run_reference_naive(model, tok, questions, device)
            naive_s.append(t)
    diff = max(abs(a - b) for m in MODES for qa, qb in zip(fast_scores[m], naive_scores[m]) for a, b in zip(qa, qb))
    per_q = {"fast": statistics.median(fast_s) / args.questions, "naive": statistics.median(naive_s) / args.questions}
    result = {
        "benchmark": "reference-protocol MCQ scoring, seconds per question (3 modes x 4 options)",
        "preset": args.preset, "device": str(device), "dtype": args.dtype, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "questions": args.questions, "frames": args.frames,
        "batch_size": args.batch_size, "repeats": args.repeats, "seconds_per_question": per_q,
        "speedup": per_q["naive"] / per_q["fast"], "max_abs_score_diff": diff,
        "runs_s": {"fast": fast_s, "naive": naive_s},
    }
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"bench_eval_reference_{device.type}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"reference protocol, {args.preset} on {device}: fast {per_q['fast']:.4f} s/q, naive {per_q['naive']:.4f} "
          f"s/q ({result['speedup']:.1f}x); max |score diff| {diff:.2e} -> {out}")


def model_llm(name: str) -> str:
    return preset(name).llm


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
    ap.add_argument("--protocol", default="fvlm", choices=["fvlm", "reference"],
                    help="fvlm: random ids, the fvlm reduction; reference: the reference protocol's rules")
    ap.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/bench_eval_<device type>.json)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(preset(args.preset, ["pretrained=false"])).to(device).eval()
    if args.dtype == "bf16":
        model.to(torch.bfloat16)
    if args.protocol == "reference":
        return main_reference(args, model, device)
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
