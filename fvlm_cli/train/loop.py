"""One training loop for stages 1-3 and DPO, on one process or under torchrun (DDP).

    cfg = load_run_config("configs/train/tiny-stage1.yaml", ["train.steps=50"])
    summary = train(cfg)                 # or train(cfg, dpo=True), train(cfg, resume=True)

Every rank takes exactly `train.steps * train.grad_accum` batches from an endless loader, so no rank can
leave the others waiting; gradients are all-reduced once per optimizer step (no_sync on the others). A
non-finite loss is skipped on every rank together (the decision is all-reduced) and counted.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from fvlm_cli import config as cfglib
from fvlm_cli.errors import SIGNALS_RECEIVED, ConfigError, Terminated, TrainingError
from fvlm_cli.eval.loss import evaluate_loss, model_inputs, query_attention, entropy, shared_fraction, to_device
from fvlm_cli.settings import RunConfig
from fvlm_cli.train import checkpoint
from fvlm_cli.train.dpo import dpo_loss, pair_batch
from fvlm_cli.train.flops import peak_flops, sample_flops
from fvlm_cli.train.logger import MetricsLogger
from fvlm_cli.train.optim import build_optimizer, build_scheduler, lrs, masked_step


def load_run_config(path: str | None, overrides: list[str] | None = None, flags: dict | None = None,
                    base: dict | None = None) -> RunConfig:
    """Read a stage config, then `--set` overrides, then command-line flags ({dotted key: value}).

    `model: <preset>` (a string) expands to that preset's model section.
    """
    def expand(d: dict) -> dict:
        if isinstance(d.get("model"), str):
            d["model"] = cfglib.read_yaml(cfglib.CONFIG_DIR / "model" / f"{d['model']}.yaml")
        return d

    data = expand(cfglib.deep_merge(base or {}, cfglib.read_yaml(path) if path else {}))  # model.* overrides apply to the preset
    preset = [o for o in overrides or [] if o.split("=", 1)[0].strip() == "model"]  # `model=<preset>` first
    data = expand(cfglib.apply_overrides(data, preset, None))
    data = cfglib.apply_overrides(data, [o for o in overrides or [] if o not in preset], None)
    for key, value in (flags or {}).items():
        cfglib.assign(data, key, value)
    if isinstance(data.get("model"), str):  # `model=<preset>` given as an override
        data = cfglib.apply_overrides(expand(data), [o for o in overrides or [] if o.startswith("model.")], None)
    return cfglib.from_dict(RunConfig, data)


def _dist() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("FVLM_BACKEND") != "gloo" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
    return rank, world, local


def _initial_model(cfg: RunConfig):
    from fvlm_cli.model.build import build_model, find_folder, load_folder
    from fvlm_cli.model.tokenizer import load_tokenizer

    if cfg.train.init_from:
        path = Path(cfg.train.init_from)
        if not path.exists():  # never a silent start from base weights
            raise ConfigError(f"train.init_from: {path} does not exist")
        lm = load_folder(find_folder(path))
        cfg.model = lm.model_cfg
        return lm.model, lm.tokenizer
    model = build_model(cfg.model)
    return model, load_tokenizer(cfg.model.tokenizer or cfg.model.llm)


def _memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def compile_encoder(model, backend: str = "inductor") -> None:
    """`train.compile`: torch.compile the DINO patch pass and the query walk (the hot, shape-stable parts). The bound
    methods are compiled, not the module, so parameter names keep no `_orig_mod.` prefix. Gradient checkpointing
    stays non-reentrant (build.py), which is what compile needs (SPEC §10: reentrant + compile gave NaN)."""
    model.encoder.encode = torch.compile(model.encoder.encode, backend=backend)
    model.encoder.query = torch.compile(model.encoder.query, backend=backend)


def compile_model(net, backend: str = "inductor"):
    """`train.compile=model`: the whole training forward compiled (torch.compile of the module or of its DDP
    wrapper). The forward has no host sync (SPEC §9.1), so a mode's forward is one graph; batch shapes and the host
    `Bounds` turn dynamic after their first change instead of recompiling per batch. Under DDP, dynamo's DDPOptimizer
    (which splits the graph at gradient buckets) fails on those dynamic sizes (pytorch#134182), so it is off: the
    gradients are all-reduced after the compiled backward instead of overlapping it. Validation and saving use the
    plain module: no `_orig_mod.` prefix, and evaluation modes add no graphs."""
    if isinstance(net, torch.nn.parallel.DistributedDataParallel):
        torch._dynamo.config.optimize_ddp = False
    return torch.compile(net, backend=backend)


def wrap_ddp(model, mode: str, device: torch.device):
    """DDP without the per-step unused-parameter search: the parameters `mode` never uses are ignored by DDP."""
    DDP = torch.nn.parallel.DistributedDataParallel
    DDP._set_params_and_buffers_to_ignore_for_model(model, sorted(model.unused_parameters(mode)))
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False)


def step_bounds(host: dict, dpo: bool):
    """Shape bounds for the forward from the batch while it is still on the host (no device read)."""
    from fvlm_cli.model.vlm import Bounds

    if dpo:
        pb = pair_batch(host)
        return Bounds.of(pb["visual_pos"], pb["loss_mask"], pb["attention_mask"])
    return Bounds.of(host["visual_pos"], host.get("loss_mask"), host.get("attention_mask"))


def batch_counts(host: dict) -> tuple[int, int, int]:
    """(samples, real frames, text tokens) of a host batch, for throughput and MFU."""
    am = host["attention_mask"] if "attention_mask" in host else host["chosen_attention_mask"]
    return host["frames"].shape[0], int(host["frame_mask"].sum()), int(am.sum())


def _all_ok(flag: bool, device: torch.device, world: int) -> bool:
    """True on every rank iff `flag` is true on every rank (a failed save stops all ranks together)."""
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0)


def _mean(x: float, device: torch.device, world: int) -> float:
    if world == 1:
        return x
    t = torch.tensor([x], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world


def train(cfg: RunConfig, *, dpo: bool = False, resume: bool = False, quiet: bool = False) -> dict:
    from fvlm_cli.data.loader import build_eval_loader, build_train_loader
    from fvlm_cli.model.build import load_weights
    from fvlm_cli.runtime import autocast, resolve_device, resolve_dtype, seed_all

    rank, world, _ = _dist()
    device = resolve_device(cfg.train.device)
    dtype = resolve_dtype(cfg.train.dtype, device)
    if device.type == "cuda" and cfg.train.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    run_dir = Path(cfg.out_dir)
    ck = checkpoint.latest(run_dir)
    if resume and ck is None:
        raise TrainingError(f"--resume: no checkpoint in {run_dir}/checkpoints")
    if not resume and ck is not None:
        raise TrainingError(f"{run_dir} already has checkpoints; pass --resume to continue it or choose another --out")
    seed_all(cfg.train.seed)
    model, tokenizer = _initial_model(cfg)
    ref_model = None
    ref_cache: dict[str, tuple[float, float]] = {}
    if dpo:
        ref_model = copy.deepcopy(model).to(device).eval().requires_grad_(False)  # the initial model, even on resume
        if cfg.dpo.reference == "precomputed":  # one pass now, then the reference model is freed
            ref_cache = _precompute_reference(ref_model, cfg, tokenizer, run_dir, device)
            ref_model = None
    state = None
    if resume:  # the newest checkpoint that reads back (a truncated `latest` falls back to the one before)
        ck, weights, state, unreadable = checkpoint.load_for_resume(run_dir)
        load_weights(model, weights)
        for name, why in unreadable if rank == 0 else ():
            print(f"checkpoint {name} is unreadable ({why}); resuming from {ck.name}", file=sys.stderr, flush=True)
    model.to(device).train()
    opt = build_optimizer(model, cfg.optim, device)
    sched = build_scheduler(opt, cfg.train.steps, cfg.optim)
    if cfg.train.compile == "encoder":  # the DINO patch pass and the query walk; the module itself stays
        # uncompiled, so its state_dict has no `_orig_mod.` prefix (checkpoint.save strips one anyway)
        compile_encoder(model, cfg.train.compile_backend)
    # Parameters a forward in this mode never uses are left out of DDP (a fixed set: text-only batches run the
    # vision path on one masked slot), so DDP needs no unused-parameter search on every step.
    net = wrap_ddp(model, cfg.train.mode, device) if world > 1 else model
    # the training step's forward (validation and saving use `model`)
    forward = compile_model(net, cfg.train.compile_backend) if cfg.train.compile == "model" else net
    stage = 3 if dpo else cfg.train.stage
    loader = build_train_loader(cfg, tokenizer, stage=stage, rank=rank, world_size=world, dpo=dpo,
                                pin_memory=device.type == "cuda",  # so non_blocking copies really overlap
                                outlive_stop_signals=True)  # StopRequest below; closed in its `finally`
    val_batches = []
    if cfg.data.val:
        val_batches = list(build_eval_loader(cfg.data.val, tokenizer, cfg, stage=stage, limit=cfg.data.val_samples,
                                             dpo=False))
    if state is not None:
        try:
            opt.load_state_dict(state["optimizer"])
        except ValueError as e:  # torch: "... different number of parameter groups" / "... doesn't match the size ..."
            raise TrainingError(f"cannot resume from {ck}: its optimizer state does not fit this run's parameter "
                                f"groups ({e}). The `optim.*.frozen` settings must be the ones it was saved with; "
                                f"to start over from its weights use train.init_from={ck} in a new run") from None
        sched.load_state_dict(state["scheduler"])
        loader.load_state_dict(state["loader"])  # every rank's position: exact, or elastic on another world size
        checkpoint.restore_rng(state)
        if rank == 0:
            _resume_notice(run_dir, ck, state, loader)
    start = state["step"] if state else 0
    samples_seen = state["samples_seen"] if state else 0
    skipped = state.get("skipped", 0) if state else 0
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(cfglib.dump(cfg))
    log = MetricsLogger(run_dir, enabled=(rank == 0), quiet=quiet, wandb_cfg=cfg if cfg.train.wandb else None)
    peak = peak_flops(device)
    ac = lambda: autocast(device, dtype)
    it = iter(loader)
    last_val: dict = {}
    t_last = time.perf_counter()
    counters = {"samples": 0, "frames": 0, "tokens": 0, "flops": 0.0}
    if val_batches and start == 0:  # the starting point, so curves show what training changed
        last_val = validate(model, val_batches, cfg.train.eval_modes, device, ac)
        log.log({"step": 0, **{f"val/{k}": v for k, v in last_val.items()}}, total=cfg.train.steps)
    # Device-side bookkeeping: nothing below reads a device value back except at log/eval/save steps.
    zero = lambda: torch.zeros((), device=device)
    skipped_acc, bad_run, worst_run = zero(), zero(), zero()
    skipped_base, last_loss, gnorm, dpo_metrics = skipped, zero(), zero(), {}
    pending = 0  # samples this rank trained since samples_seen was last summed over ranks
    def save(metric=None) -> None:  # this step's checkpoint (the loop's current step and counters)
        _save(run_dir, step_no, model, tokenizer, cfg, opt, sched, loader, rank, world, samples_seen, skipped, metric)

    stop = StopRequest()  # SIGTERM / SIGUSR1: finish the step, save, stop (a preempted job resumes from there)
    try:
        for step in range(start, cfg.train.steps):
            t_data = 0.0
            loss_sum = zero()
            for micro in range(cfg.train.grad_accum):
                t0 = time.perf_counter()
                host = next(it)
                hints = step_bounds(host, dpo)  # from the host tensors: free
                B, nf, nt = batch_counts(host)
                batch = to_device(host, device)
                t_data += time.perf_counter() - t0
                sync = micro == cfg.train.grad_accum - 1
                ctx = net.no_sync() if (world > 1 and not sync) else nullcontext()
                with ctx:
                    with ac():
                        if dpo:
                            pb = pair_batch(batch)
                            out = forward(**pb, mode=cfg.train.mode, return_logits=False, bounds=hints, repeat_frames=2)
                            pi_c, pi_r = out["logps"][:B].float(), out["logps"][B:].float()
                            ref_c, ref_r = _reference(ref_model, pb, batch, cfg, ref_cache, B, hints)
                            loss, dpo_metrics = dpo_loss(pi_c, pi_r, ref_c, ref_r, cfg.dpo.beta)
                        else:
                            out = forward(**model_inputs(batch), mode=cfg.train.mode, return_logits=False, bounds=hints)
                            loss = out["loss"]
                    (loss / cfg.train.grad_accum).backward()
                loss_sum = loss_sum + loss.detach().float()
                pending += B
                counters["samples"] += B
                counters["frames"] += nf
                counters["tokens"] += nt
                counters["flops"] += sample_flops(model, nf / max(B, 1), nt / max(B, 1), cfg.train.mode) * B * (2 if dpo else 1)
            last_loss = loss_sum / cfg.train.grad_accum
            params = [p for p in model.parameters() if p.requires_grad]
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf"))
            # A non-finite loss or gradient skips the update on the device (the fused optimizer's found_inf), on every
            # rank together (the flag is all-reduced); the count is read at the next log/save step.
            ok = torch.isfinite(last_loss) & torch.isfinite(gnorm)
            if world > 1:
                flag = ok.float()
                dist.all_reduce(flag, op=dist.ReduceOp.MIN)
                ok = flag > 0
            masked_step(opt, ok)
            bad = (~ok).float()
            skipped_acc += bad
            bad_run = (bad_run + 1) * bad
            worst_run = torch.maximum(worst_run, bad_run)
            opt.zero_grad(set_to_none=True)
            sched.step()
            step_no = step + 1
            is_last = step_no == cfg.train.steps
            log_now = step_no % cfg.train.log_every == 0 or is_last or step_no == start + 1
            save_now = bool(cfg.train.save_every and step_no % cfg.train.save_every == 0) or is_last
            eval_now = bool(val_batches) and ((cfg.train.eval_every and step_no % cfg.train.eval_every == 0) or is_last)
            stop_now = stop.requested and world == 1  # one process: at any step (a Python flag, no device read)
            if log_now or save_now or eval_now or stop_now:  # the only host reads of the step
                samples_seen += _sum_int(pending, device, world)
                pending = 0
                skipped = skipped_base + int(skipped_acc.item())
                if world > 1:  # every rank stops at the same step: the request is agreed where the ranks sync anyway
                    stop_now = not _all_ok(not stop.requested, device, world)
                if worst_run.item() >= cfg.train.max_bad_steps:
                    save()
                    raise TrainingError(f"{int(worst_run.item())} consecutive non-finite losses by step {step_no}; saved a "
                                        f"checkpoint in {run_dir}/checkpoints (lower the LR or check the data)")
            stop_now = stop_now and not is_last  # the last step ends the run anyway
            eval_now = eval_now and not stop_now  # a preempted job's grace period goes to the save
            if log_now:
                now = time.perf_counter()
                dt = max(now - t_last, 1e-9)
                rec = {"step": step_no, "loss": _mean(float(last_loss), device, world), "grad_norm": float(gnorm),
                       **lrs(opt), "samples_per_s": counters["samples"] * world / dt,
                       "frames_per_s": counters["frames"] * world / dt, "tokens_per_s": counters["tokens"] * world / dt,
                       "data_wait_s": t_data, "mfu": (counters["flops"] / dt / peak) if peak else None,
                       "memory_gb": _memory_gb(device), "samples_seen": samples_seen, "skipped_steps": skipped,
                       **{k: float(v) for k, v in dpo_metrics.items()}}
                log.log(rec, total=cfg.train.steps)
                t_last = now
                counters = {"samples": 0, "frames": 0, "tokens": 0, "flops": 0.0}
            if eval_now:
                last_val = validate(model, val_batches, cfg.train.eval_modes, device, ac)
                log.log({"step": step_no, **{f"val/{k}": v for k, v in last_val.items()}}, total=cfg.train.steps)
            if save_now:
                metric = None
                if last_val:
                    metric = last_val.get(cfg.train.best_metric.removeprefix("val/"))
                save(metric)
            if stop_now:
                if not save_now:
                    save()
                log.close()
                if rank == 0:
                    print(f"stopped by signal {stop.signal_name} after step {step_no}: saved checkpoint "
                          f"step-{step_no:06d} in {run_dir}/checkpoints; the same command with --resume continues",
                          file=sys.stderr, flush=True)
                raise Terminated()
    finally:
        stop.close()
        loader.close()  # the workers exit through the loader's own shutdown, not a terminate at interpreter exit
    log.close()
    if world > 1:
        dist.barrier()
    summary = {"run_dir": str(run_dir), "steps": cfg.train.steps, "skipped_steps": skipped, "val": last_val,
               "final_loss": log.last.get("loss"), "dropped_samples": getattr(loader, "dropped", 0)}
    if rank == 0:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


class StopRequest:
    """SIGTERM or SIGUSR1 while training (a scheduler's preemption; SLURM's `--signal=USR1@120`, or torchrun passing
    its own SIGTERM on): the step in progress finishes, a checkpoint is saved, and `train` raises `Terminated`
    (exit 143). One process stops after the current step; under DDP the ranks agree at the next log/save/eval step,
    where they sync anyway, so keep `train.log_every` steps shorter than the grace period. A second signal stops at
    once, without a save."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self._old: dict = {}
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        SIGNALS_RECEIVED.append(signum)
        if self.requested:
            raise Terminated()
        self.requested, self.signal_name = True, signal.Signals(signum).name

    def close(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}


def _sum_int(x: int, device, world: int) -> int:
    if world == 1:
        return x
    t = torch.tensor([x], device=device, dtype=torch.long)
    dist.all_reduce(t)
    return int(t.item())


def _reference(ref_model, pb, batch, cfg, cache, B, hints=None):
    """Reference log-probs of chosen/rejected: the frozen initial model, or its precomputed values."""
    if cfg.dpo.reference == "precomputed":
        missing = [i for i in batch["ids"] if i not in cache]
        if missing:
            raise TrainingError(f"no precomputed reference log-probs for sample {missing[0]!r}; delete ref_logps.json and rerun")
        vals = torch.tensor([cache[i] for i in batch["ids"]], device=pb["frames"].device)
        return vals[:, 0], vals[:, 1]
    with torch.no_grad():
        out = ref_model(**pb, mode=cfg.train.mode, return_logits=False, bounds=hints, repeat_frames=2)
    return out["logps"][:B].float(), out["logps"][B:].float()


@torch.no_grad()
def _precompute_reference(ref_model, cfg: RunConfig, tokenizer, run_dir: Path, device) -> dict:
    """Summed answer log-probs of the initial model for every preference pair in data.train, saved in
    RUN/ref_logps.json (reused on --resume)."""
    from fvlm_cli.data.loader import build_eval_loader

    path = run_dir / "ref_logps.json"
    if path.exists():
        return {k: tuple(v) for k, v in json.loads(path.read_text()).items()}
    cache = {}
    for s in cfg.data.train:
        for batch in build_eval_loader(s.path, tokenizer, cfg, stage=3, dpo=True):
            b = to_device(batch, device)
            pb = pair_batch(b)
            out = ref_model(**pb, mode=cfg.train.mode, return_logits=False, repeat_frames=2)
            B = b["frames"].shape[0]
            for i, c, r in zip(b["ids"], out["logps"][:B].tolist(), out["logps"][B:].tolist()):
                cache[i] = (c, r)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # ranks may write the same values at once
    tmp.write_text(json.dumps(cache))
    os.replace(tmp, path)
    return cache


def validate(model, batches, modes, device, ac) -> dict:
    out = evaluate_loss(model, batches, modes, device, ac)
    vis = next((b for b in batches if b["frame_mask"].any()), None)
    if vis is not None:
        b = to_device(vis, device)
        model.eval()
        attn = query_attention(model, b["frames"], b["frame_mask"].bool(), b["input_ids"], b["attention_mask"],
                               b["visual_pos"])
        model.train()
        out["attn_entropy_coarse"] = entropy(attn["coarse"][-1])
        out["attn_entropy_fine"] = entropy(attn["fine"][-1])
        if len(attn["tokens_fine"]) > 1:
            out["token_shared_coarse"] = shared_fraction(attn["tokens_coarse"])
            out["token_shared_fine"] = shared_fraction(attn["tokens_fine"])
    return out


def _resume_notice(run_dir, ck, state, loader) -> None:
    """Say where the run resumes (and whether the data position was mapped elastically); drop the metrics rows
    after the checkpoint's step, which this run logs again."""
    from fvlm_cli.train.logger import truncate_metrics

    dropped = truncate_metrics(run_dir, state["step"])
    line = f"resumed from step {state['step']} ({ck.name})"
    if dropped:
        line += f"; dropped {dropped} metrics.jsonl row(s) logged after it"
    info = loader.resumed or {}
    if info.get("elastic"):
        sets = ", ".join(f"{s['set']}: {s['left']} sample(s) of epoch {s['epoch']} left" for s in info["sets"])
        line += (f"; elastic data resume from {info['from']} to {info['to']}: the rest of the current epoch is "
                 f"read exactly once, then new epochs ({sets})")
    print(line, file=sys.stderr, flush=True)


def _save(run_dir, step, model, tokenizer, cfg, opt, sched, loader, rank, world, samples_seen, skipped, metric):
    loader_state = loader.state_dict()
    if world > 1:
        states = [None] * world
        dist.all_gather_object(states, loader_state)
    else:
        states = [loader_state]
    error = None
    if rank == 0:
        try:
            checkpoint.save(run_dir, step, model, tokenizer, cfg,
                            {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "loader": states,
                             "samples_seen": samples_seen, "skipped": skipped},
                            keep_last=cfg.train.keep_last, metric=metric)
        except TrainingError as e:
            error = e
    if not _all_ok(error is None, next(model.parameters()).device, world):  # every rank stops, none hangs
        raise error or TrainingError(f"rank 0 could not write checkpoint step-{step:06d}; see its message")
