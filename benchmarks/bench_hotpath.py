"""Same-workload CPU training step, before vs after the issue-13 hot path (SPEC §9.1), in one process.

    OMP_NUM_THREADS=1 python benchmarks/bench_hotpath.py [--rounds 4] [--only tiny|135m]
    -> results/hotpath_cpu.json

before: the model code as it was on main (a frozen copy, benchmarks/_before_vlm.py: per-sample Python layout with
        .tolist(), real-frames-only DINO with int(frame_mask.sum()), full last DINO layer, per-step bool/int reads)
        and main's step: float(loss) every micro-step, a host isfinite check, unfused AdamW.
after:  fvlm_cli as it is: host-side Bounds, device layout, last DINO layer stopped at its K/V, fused AdamW with the
        non-finite skip on the device (train/optim.masked_step), running sums on the device.
Both start from the same weights and see the same batches (fp32). Equivalence is checked on identical weights, batch by
batch (loss to 1e-5, gradients to 1e-4 relative); the timed runs' losses are recorded and drift apart after a few
AdamW steps (see `equivalence`).
The two alternate in blocks of `--block` steps over `--rounds` rounds, so the machine's load (it is shared) hits
both alike; each variant's figure is the median step time of all its timed steps, as wall time and as the thread's
CPU time (time.thread_time: one torch thread, so it counts this step's own work and is far less sensitive to other
processes on a shared machine than wall time).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fvlm_cli.model.build import build_model, preset  # noqa: E402
from fvlm_cli.model.vlm import Bounds  # noqa: E402
from fvlm_cli.profile import synthetic_batch  # noqa: E402
from fvlm_cli.settings import OptimConfig  # noqa: E402
from fvlm_cli.train.loop import compile_model  # noqa: E402
from fvlm_cli.train.optim import build_optimizer, masked_step  # noqa: E402

import _before_vlm  # noqa: E402

SHAPES = {  # the shapes of benchmarks/bench_train.py (TINY, M135) and fvlm profile
    "tiny": dict(preset="tiny", B=8, T=8, S=64),
    "135m": dict(preset="fvlm-135m", B=2, T=8, S=64),
}


def as_before(model):
    """The same weights in main's FoveatedVLM class (its methods, its layout, its DINO calls)."""
    old = copy.deepcopy(model)
    old.__class__ = _before_vlm.FoveatedVLM
    return old


class Runner:
    def __init__(self, model, variant: str, batches: list[dict], mode: str, forward=None):
        self.model, self.variant, self.batches, self.mode = model.train(), variant, batches, mode
        self.forward = self.model if forward is None else forward  # what the step calls: the module, or its compiled forward
        cfg = OptimConfig(fused=(variant == "after"))
        self.opt = build_optimizer(self.model, cfg, torch.device("cpu"))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.i = 0
        self.losses: list[float] = []
        self.times: list[float] = []
        self.cpu: list[float] = []

    def step(self, timed: bool) -> None:
        host = self.batches[self.i % len(self.batches)]
        self.i += 1
        t0, c0 = time.perf_counter(), time.thread_time()
        if self.variant == "before":  # main's loop body
            out = self.model(**host, mode=self.mode, return_logits=False)
            out["loss"].backward()
            loss = float(out["loss"].detach())
            gnorm = torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            if bool(torch.isfinite(torch.tensor(loss)) and torch.isfinite(gnorm)):
                self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        else:  # the loop body now
            bounds = Bounds.of(host["visual_pos"], host["loss_mask"], host["attention_mask"])
            out = self.forward(**host, mode=self.mode, return_logits=False, bounds=bounds)
            out["loss"].backward()
            loss_t = out["loss"].detach()
            gnorm = torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            masked_step(self.opt, torch.isfinite(loss_t) & torch.isfinite(gnorm))
            self.opt.zero_grad(set_to_none=True)
            loss = float(loss_t)  # read after the timed step (a log step would read it)
        dt, dc = time.perf_counter() - t0, time.thread_time() - c0
        self.losses.append(loss)
        if timed:
            self.times.append(dt)
            self.cpu.append(dc)


def equivalence(model, batches: list[dict], mode: str) -> dict:
    """The two codes on identical weights, batch by batch: loss and gradient differences of one forward + backward.

    This is the equivalence check. The per-step losses of the timed runs drift apart after a few optimizer steps
    (recorded, not checked): AdamW's first steps move every parameter by about +-LR whatever its gradient's size, so
    where a gradient is at rounding-noise level the sign of the step is set by the last bit, and the differences grow
    step by step; the wide-init tiny DINO amplifies that (docs/LOG.md, issue 13)."""
    old, new = as_before(model).train(), copy.deepcopy(model).train()
    loss_diff, grad_diff = 0.0, 0.0
    for host in batches:
        grads = []
        for m, variant in ((old, "before"), (new, "after")):
            m.zero_grad(set_to_none=True)
            kw = {} if variant == "before" else {"bounds": Bounds.of(host["visual_pos"], host["loss_mask"],
                                                                    host["attention_mask"])}
            out = m(**host, mode=mode, return_logits=False, **kw)
            out["loss"].backward()
            grads.append((float(out["loss"].detach()), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
        (lb, gb), (la, ga) = grads
        loss_diff = max(loss_diff, abs(lb - la))
        for n in set(gb) | set(ga):
            if ".attention.k_proj.bias" in n or ".attention.key.bias" in n:
                continue  # exact gradient zero (softmax ignores a shift shared by all keys): both sides hold noise
            g, h = gb.get(n), ga.get(n)
            g, h = (h * 0 if g is None else g), (g * 0 if h is None else h)  # None = no gradient = zero
            grad_diff = max(grad_diff, float((g - h).norm() / (g.norm() + 1e-8)))
    return {"loss_diff_max": loss_diff, "grad_rel_diff_max": grad_diff,
            "equal": loss_diff <= 1e-5 and grad_diff <= 1e-4}


def run_shape(name: str, rounds: int, block: int, warmup: int, mode: str, ragged: bool, compiled: bool = False) -> dict:
    s = SHAPES[name]
    torch.manual_seed(0)
    model = build_model(preset(s["preset"]), pretrained=False)
    batches = [synthetic_batch(model, s["B"], s["T"], s["S"], ragged=ragged, answer_tokens=s["S"] // 4, seed=k)
               for k in range(4)]
    runners = {"before": Runner(as_before(model), "before", batches, mode),
               "after": Runner(copy.deepcopy(model), "after", batches, mode)}
    if compiled:  # the same step as `train.compile=model` runs it: the whole forward compiled by inductor
        m = copy.deepcopy(model)
        runners["compiled"] = Runner(m, "after", batches, mode, forward=compile_model(m))
    t0 = time.perf_counter()
    for k, r in runners.items():  # the compiled step sees every batch first: its recompiles are warm-up, not timing
        for _ in range(max(warmup, len(batches)) if k == "compiled" else warmup):
            r.step(timed=False)
    warm_s = time.perf_counter() - t0
    for _ in range(rounds):
        for r in runners.values():
            for _ in range(block):
                r.step(timed=True)
    b, a = runners["before"], runners["after"]
    diff = max(abs(x - y) for x, y in zip(b.losses, a.losses))
    med = {k: statistics.median(r.times) for k, r in runners.items()}
    cpu = {k: statistics.median(r.cpu) for k, r in runners.items()}
    res = {"shape": s, "mode": mode, "ragged": ragged, "steps_timed": len(a.times),
           "step_s_median": med, "step_s_min": {k: min(r.times) for k, r in runners.items()},
           "step_cpu_s_median": cpu, "speedup": med["before"] / med["after"],
           "speedup_cpu_time": cpu["before"] / cpu["after"], "max_abs_loss_diff": diff, "losses_after": a.losses,
           "losses_before": b.losses, "first_step_loss_diff": abs(a.losses[0] - b.losses[0]),
           "equivalence": equivalence(model, batches, mode)}
    if compiled:
        c = runners["compiled"]
        # Only the first step can agree to 1e-5: compiled and eager kernels round differently, and AdamW turns
        # noise-level gradients into LR-sized steps, so later losses drift (see `equivalence`).
        res["compiled"] = {"step_s_median": statistics.median(c.times), "step_cpu_s_median": statistics.median(c.cpu),
                           "speedup": med["before"] / statistics.median(c.times),
                           "speedup_cpu_time": cpu["before"] / statistics.median(c.cpu),
                           "first_step_loss_diff": abs(c.losses[0] - b.losses[0]),
                           "warmup_and_compile_s": warm_s}
        print(f"  compiled: wall {res['compiled']['step_s_median']:.4f}s {res['compiled']['speedup']:.2f}x | thread CPU "
              f"{res['compiled']['step_cpu_s_median']:.4f}s {res['compiled']['speedup_cpu_time']:.2f}x | first-step "
              f"loss diff {res['compiled']['first_step_loss_diff']:.1e}", flush=True)
    eq = res["equivalence"]
    print(f"  same weights, {len(batches)} batches: max |loss diff| {eq['loss_diff_max']:.1e}, max relative grad diff "
          f"{eq['grad_rel_diff_max']:.1e} ({'equal' if eq['equal'] else 'NOT EQUAL'})", flush=True)
    print(f"{name} {mode}{' ragged' if ragged else ''}: wall before {med['before']:.4f}s after {med['after']:.4f}s "
          f"{res['speedup']:.2f}x | thread CPU before {cpu['before']:.4f}s after {cpu['after']:.4f}s "
          f"{res['speedup_cpu_time']:.2f}x | loss drift over the timed steps {diff:.2e}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--block", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--big-rounds", type=int, default=2, help="rounds for the 135m shape (one step per block)")
    ap.add_argument("--only", default="")
    ap.add_argument("--compile", action="store_true", help="also time the step with train.compile=model (the whole "
                    "forward compiled by inductor; ragged batches turn its shapes dynamic)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "hotpath_cpu.json"))
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    jobs = [("tiny", "coarse_fine", False), ("tiny", "coarse_fine", True), ("tiny", "autoregressive", False),
            ("135m", "coarse_fine", False)]
    rows = []
    for name, mode, ragged in jobs:
        if args.only and args.only != name:
            continue
        big = name == "135m"
        rows.append(run_shape(name, args.big_rounds if big else args.rounds, 1 if big else args.block,
                              1 if big else args.warmup, mode, ragged, compiled=args.compile))
    out = {"what": "CPU training step, main's code (before) vs this branch (after), same weights and batches, fp32",
           "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0],
           "torch": torch.__version__, "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
