"""`fvlm profile`: where the time goes in training, inference, loading and MCQ scoring (SPEC §9).

    args = ProfileArgs(preset="tiny", batch_size=4, frames=8, text_tokens=64, steps=5)
    res = profile_train(args)        # also profile_infer, profile_data, profile_bench; JSON-ready dicts

train  A random-init model of the preset (`build_model(..., pretrained=False)`: same cost as real weights), one
       synthetic batch of B samples x T frames (the preset's image size) x S text tokens, the real optimizer and
       scheduler, and the loop's step: `model(**batch, mode, return_logits=False)` under autocast, backward,
       clip_grad_norm_, AdamW step, zero_grad. Per step it times
         data          the host->device copy of the pre-built batch (a no-op on CPU)
         dino_forward  the DINO patch pass (`encoder.encode`, timed by wrapping it)
         forward_rest  the rest of the forward: text embedding, layouts, query walks, LLM passes, head
         backward      the whole backward, DINO's included (autograd gives no cheap per-module split)
         optimizer     grad clipping, AdamW with the loop's on-device skip of non-finite steps, zero_grad
       Each boundary waits for the device (torch.cuda.synchronize, then perf_counter), so on a GPU the split
       costs a few syncs per step and removes CPU/GPU overlap at the boundaries; `--set profile.split=false`
       times whole steps without the inner syncs. Step times are medians over `steps` after `warmup`; the
       split is the mean per step (so its parts add up). MFU = sample_flops (fvlm_cli/train/flops.py: 3 x
       forward, DINO patch pass + query walks + LLM incl. the coarse pass + lm_head on text) x B / step time
       / peak bf16 FLOP/s of the GPU; None on CPU, where achieved FLOP/s are reported instead.
       Peak memory: torch.cuda.max_memory_allocated over the timed steps on a GPU; on CPU the process' peak
       RSS (VmHWM, reset after warm-up through /proc/self/clear_refs where Linux allows it). activation_gb:
       the bytes autograd saves for backward in one extra, untimed forward (device independent).
infer  `generate_ids` per mode for B prompts x T frames x S prompt tokens, greedy, no stop token (every run
       decodes exactly max_new_tokens). Time to first token is a max_new_tokens=1 run timed end to end (DINO,
       prefill, first token), decode tokens/s = B x (N - 1) / (time of an N-token run - time to first token).
data   Writes generated shards (mixed frame counts T/4..T at the preset's image size) to a temporary
       directory and times `build_train_loader` with 0, 1, 2 workers: samples/s, per worker, padded-frame waste.
bench  MCQ scoring, `eval.mcq.score_fast` against `score_naive` (DINO re-encoded per option x mode).

Switches (`--set profile.<key>=...`; the rest of --set is the RunConfig: model.*, optim.*, train.*, data.*).
The reference variants the library's choices are measured against (full coarse pass, lm_head everywhere, DINO on
real frames only) are measurement code: benchmarks/reference_variants.py, run through benchmarks/profile_variant.py.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch

from fvlm_cli import config as cfglib
from fvlm_cli.config import field
from fvlm_cli.errors import FvlmError
from fvlm_cli.settings import MODES, RunConfig

TARGETS = ("train", "infer", "data", "bench")


@dataclass
class Switches:
    ragged: bool = field(False, help="synthetic batches with mixed frame counts (T, ..., ~T/B): padded frames exist")
    answer_tokens: int = field(0, help="loss on the last N text tokens only, as in SFT (0 = all text, as stage 1)")
    compile: Literal["none", "query", "all"] = field("none", help="torch.compile the query walk, or it and the DINO patch pass")
    pin_memory: bool = field(False, help="pinned host batches (CUDA; the copy is non_blocking either way)")
    split: bool = field(True, help="time the step's phases (syncs inside the step); false = whole steps only")
    workers: list[int] = field([0, 1, 2], help="data: DataLoader worker counts to time")
    samples: int = field(96, help="data: samples written to the temporary shards")
    questions: int = field(8, help="bench: questions scored")
    options: int = field(4, help="bench: options per question")
    max_new_tokens: int = field(16, help="infer: tokens generated per prompt")
    threads: int = field(0, help="torch CPU threads (0 = torch's default); 1 is steadier on a shared machine")


@dataclass
class ProfileConfig(RunConfig):
    """A RunConfig (model from the preset; optim/train/data as for training) plus the profile switches."""

    profile: Switches = field(None, help="profiling switches and reference variants")

    def __post_init__(self):
        super().__post_init__()
        if self.profile is None:
            self.profile = Switches()


@dataclass
class ProfileArgs:
    preset: str = "tiny"
    batch_size: int = 4
    frames: int = 8
    text_tokens: int = 64
    steps: int = 5
    warmup: int = 1
    device: str = "auto"
    dtype: str = "auto"
    mode: Optional[str] = None          # train: coarse_fine; infer/bench: all three
    sets: Optional[list[str]] = None    # --set overrides


def load_config(args: ProfileArgs) -> ProfileConfig:
    from fvlm_cli.model.build import PRESET_DIR, preset

    preset(args.preset)  # unknown preset -> ModelLoadError listing the presets
    data = {"model": cfglib.read_yaml(PRESET_DIR / f"{args.preset}.yaml")}
    return cfglib.from_dict(ProfileConfig, cfglib.apply_overrides(data, args.sets, ProfileConfig))


def modes_of(args: ProfileArgs, target: str) -> list[str]:
    if args.mode in (None, "all"):
        return ["coarse_fine"] if target == "train" else list(MODES)
    if args.mode not in MODES:
        raise FvlmError(f"--mode {args.mode!r}: use one of {', '.join(MODES)}" + (" or all" if target != "train" else ""))
    return [args.mode]


# ---------------------------------------------------------------- switches

def apply_switches(model, sw: Switches, compile_all: bool = False, backend: str = "inductor") -> None:
    """Compile the query walk (`profile.compile=query`), or it and the DINO patch pass (`all`, or
    train.compile=encoder, as the training loop does; train.compile=model is applied by `profile_train`). The
    reference variants the library's choices are measured against live in benchmarks/reference_variants.py
    (benchmarks/profile_variant.py runs this profiler with one bound)."""
    if sw.compile == "all" or compile_all:
        from fvlm_cli.train.loop import compile_encoder

        compile_encoder(model, backend)
    elif sw.compile == "query":
        model.encoder.query = torch.compile(model.encoder.query, backend=backend)


# ---------------------------------------------------------------- measuring

class Clock:
    """Accumulates seconds per phase; every mark first waits for queued GPU work."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.phases: dict[str, float] = {}
        self.last = 0.0

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def start(self) -> float:
        self.sync()
        self.last = time.perf_counter()
        return self.last

    def mark(self, name: str) -> None:
        self.sync()
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self.last
        self.last = now


def _status_kb(key: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak-memory window; False when the platform keeps a lifetime peak (macOS RSS)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS
        return True
    except OSError:
        return False


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    return kb / 2**20


def machine(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {"device": str(device), "device_type": device.type, "device_name": name, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def _setup(args: ProfileArgs):
    from fvlm_cli.runtime import resolve_device, resolve_dtype

    cfg = load_config(args)
    if cfg.profile.threads > 0:
        torch.set_num_threads(cfg.profile.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if device.type == "cuda":  # as the training loop does
        torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
        torch.backends.cudnn.allow_tf32 = cfg.train.tf32
    return cfg, device, dtype


def _header(target: str, args: ProfileArgs, cfg: ProfileConfig, device, dtype) -> dict:
    return {"target": target, "preset": args.preset, "batch_size": args.batch_size, "frames": args.frames,
            "text_tokens": args.text_tokens, "steps": args.steps, "warmup": args.warmup,
            "dtype": {torch.bfloat16: "bf16", torch.float32: "fp32"}.get(dtype, str(dtype)),
            "overrides": list(args.sets or []), "switches": cfglib.to_dict(cfg.profile),
            "model": {"attn_implementation": cfg.model.attn_implementation, "image_size": cfg.model.image_size,
                      "gradient_checkpointing": cfg.model.gradient_checkpointing},
            **machine(device)}


def _build(cfg: ProfileConfig, device, *, seed: int = 0):
    from fvlm_cli.model.build import build_model

    torch.manual_seed(seed)
    model = build_model(cfg.model, pretrained=False)
    apply_switches(model, cfg.profile, cfg.train.compile == "encoder", cfg.train.compile_backend)
    return model.to(device)


def synthetic_batch(model, batch_size: int, frames: int, text_tokens: int, *, ragged: bool = False,
                    answer_tokens: int = 0, seed: int = 0) -> dict:
    """A training batch as the loader makes it: frames [B, T, 3, H, W] (zeros where padded), frame_mask [B, T],
    input_ids / attention_mask / loss_mask [B, S], visual_pos [B] = 0 (video first).
    ragged: sample b has max(1, T - b*T//B) frames, so the batch carries padded frame slots.
    answer_tokens: the loss covers the last N text tokens (0: all text)."""
    g = torch.Generator().manual_seed(seed)
    B, T, S, size = batch_size, frames, text_tokens, model.image_size
    counts = [max(1, T - (b * T) // B) if ragged else T for b in range(B)]
    frame_mask = torch.arange(T)[None] < torch.tensor(counts)[:, None]
    pixels = torch.randn(B, T, 3, size, size, generator=g) * frame_mask[..., None, None, None]
    ids = torch.randint(3, model.llm.config.vocab_size, (B, S), generator=g)
    ones = torch.ones(B, S, dtype=torch.long)
    loss_mask = ones.clone()
    if 0 < answer_tokens < S:
        loss_mask[:, : S - answer_tokens] = 0
    return {"frames": pixels, "frame_mask": frame_mask, "input_ids": ids, "attention_mask": ones,
            "loss_mask": loss_mask, "visual_pos": torch.zeros(B, dtype=torch.long)}


def activation_bytes(model, batch: dict, mode: str, device, dtype) -> int:
    """Bytes of the tensors autograd keeps for backward after one forward (unique storages, parameters
    excluded): the activation memory that gradient checkpointing trades for recompute. Device independent,
    unlike an RSS peak; measured in an extra, untimed forward."""
    from fvlm_cli.eval.loss import model_inputs
    from fvlm_cli.runtime import autocast

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(device, dtype):
        out = model(**model_inputs(batch), mode=mode, return_logits=False)
    out["loss"].backward()  # frees the graph the same way a step does
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def _to_device(batch: dict, device, pin: bool) -> dict:
    if pin and device.type == "cuda":
        batch = {k: v.pin_memory() for k, v in batch.items()}
    return batch


# ---------------------------------------------------------------- train

def profile_train(args: ProfileArgs) -> dict:
    from fvlm_cli.eval.loss import model_inputs, to_device
    from fvlm_cli.runtime import autocast
    from fvlm_cli.train.flops import peak_flops, sample_flops
    from fvlm_cli.model.vlm import Bounds
    from fvlm_cli.train.loop import compile_model
    from fvlm_cli.train.optim import build_optimizer, build_scheduler, masked_step

    cfg, device, dtype = _setup(args)
    (mode,) = modes_of(args, "train")
    t0 = time.perf_counter()
    model = _build(cfg, device)
    build_s = time.perf_counter() - t0
    model.train()
    opt = build_optimizer(model, cfg.optim, device)
    sched = build_scheduler(opt, args.warmup + args.steps, cfg.optim)
    params = [p for p in model.parameters() if p.requires_grad]
    host = _to_device(synthetic_batch(model, args.batch_size, args.frames, args.text_tokens, ragged=cfg.profile.ragged,
                                      answer_tokens=cfg.profile.answer_tokens), device, cfg.profile.pin_memory)
    clock = Clock(device)
    split = cfg.profile.split and cfg.train.compile != "model"  # a compiled whole forward has no phases to mark
    forward = compile_model(model, cfg.train.compile_backend) if cfg.train.compile == "model" else model
    if split:
        inner = model.encoder.encode

        def encode(pixels, **kw):
            clock.mark("forward_rest")
            out = inner(pixels, **kw)
            clock.mark("dino_forward")
            return out

        model.encoder.encode = encode
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    bounds = Bounds.of(host["visual_pos"], host["loss_mask"], host["attention_mask"])  # host side, as the loop does
    step_s, losses, first_step_s = [], [], None
    memory_window = False
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            clock.phases = {}
            memory_window = reset_peak_memory(device)
        start = clock.start()
        batch = to_device(host, device)
        clock.mark("data")
        with autocast(device, dtype):
            out = forward(**model_inputs(batch), mode=mode, return_logits=False, bounds=bounds)
        if split:
            clock.mark("forward_rest")
        out["loss"].backward()
        if split:
            clock.mark("backward")
        loss = out["loss"].detach()  # read after the timed steps, as the loop reads it at log steps only
        gnorm = torch.nn.utils.clip_grad_norm_(params, clip)
        masked_step(opt, torch.isfinite(loss) & torch.isfinite(gnorm))
        opt.zero_grad(set_to_none=True)
        sched.step()
        clock.mark("optimizer" if split else "compute")
        elapsed = clock.last - start
        if i == 0:
            first_step_s = elapsed
        if i >= args.warmup:
            step_s.append(elapsed)
            losses.append(loss)
    losses = [float(x) for x in losses]
    memory, phases = peak_memory_gb(device), dict(clock.phases)
    activations = activation_bytes(model, to_device(host, device), mode, device, dtype)
    n = max(len(step_s), 1)
    step = statistics.median(step_s) if step_s else float("nan")
    real_frames = int(host["frame_mask"].sum())
    B, S = args.batch_size, args.text_tokens
    flops = sample_flops(model, real_frames / B, S, mode) * B
    peak = peak_flops(device)
    res = _header("train", args, cfg, device, dtype)
    res.update({
        "mode": mode, "parameters": model.num_parameters(), "trainable_parameters": sum(p.numel() for p in params),
        "build_s": build_s, "first_step_s": first_step_s, "step_s": step, "step_s_mean": sum(step_s) / n,
        "step_s_min": min(step_s) if step_s else None, "steps_s": step_s,
        "split_s": {k: v / n for k, v in phases.items()},
        "split_fraction": {k: v / max(sum(phases.values()), 1e-12) for k, v in phases.items()},
        "samples_per_s": B / step, "frames_per_s": real_frames / step, "tokens_per_s": B * S / step,
        "real_frames": real_frames, "frame_slots": B * args.frames,
        "flops_per_step": flops, "achieved_tflops": flops / step / 1e12, "peak_flops": peak,
        "mfu": flops / step / peak if peak else None,
        "peak_memory_gb": memory, "activation_gb": activations / 2**30,
        "memory_kind": "cuda_max_allocated" if device.type == "cuda" else
        ("cpu_peak_rss_timed_steps" if memory_window else "cpu_peak_rss_process"),
        "target_tokens": int(host["loss_mask"].sum()),
        "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
        "compile_s_estimate": (first_step_s - step) if cfg.profile.compile != "none" or cfg.train.compile != "off" else None,
    })
    return res


# ---------------------------------------------------------------- infer

def profile_infer(args: ProfileArgs) -> dict:
    from fvlm_cli.model.generate import generate_ids

    cfg, device, dtype = _setup(args)
    model = _build(cfg, device).eval()
    if dtype == torch.bfloat16:  # as load_model does for inference
        model.to(torch.bfloat16)
    b = synthetic_batch(model, args.batch_size, args.frames, args.text_tokens, ragged=cfg.profile.ragged)
    b = {k: v.to(device) for k, v in b.items()}
    b["frames"] = b["frames"].to(next(model.parameters()).dtype)
    N = max(cfg.profile.max_new_tokens, 2)
    clock = Clock(device)
    memory_window = reset_peak_memory(device)

    def run(mode: str, new_tokens: int) -> tuple[float, int]:
        t0 = clock.start()
        out = generate_ids(model, b["frames"], b["frame_mask"], b["input_ids"], b["attention_mask"], b["visual_pos"],
                           mode=mode, max_new_tokens=new_tokens)
        clock.sync()
        return time.perf_counter() - t0, sum(len(o) for o in out)

    rows = {}
    for mode in modes_of(args, "infer"):
        for _ in range(args.warmup):
            run(mode, N)
        ttft = statistics.median(run(mode, 1)[0] for _ in range(args.steps))
        full = [run(mode, N) for _ in range(args.steps)]
        total = statistics.median(t for t, _ in full)
        tokens = full[0][1]
        rows[mode] = {"first_token_s": ttft, "total_s": total, "new_tokens": tokens,
                      "decode_tokens_per_s": args.batch_size * (N - 1) / max(total - ttft, 1e-9),
                      "tokens_per_s": tokens / total,
                      "prefill_tokens_per_s": args.batch_size * (args.frames + args.text_tokens) / ttft}
    res = _header("infer", args, cfg, device, dtype)
    res.update({"max_new_tokens": N, "parameters": model.num_parameters(), "modes": rows,
                "peak_memory_gb": peak_memory_gb(device),
                "memory_kind": "cuda_max_allocated" if device.type == "cuda" else
                ("cpu_peak_rss_runs" if memory_window else "cpu_peak_rss_process")})
    return res


# ---------------------------------------------------------------- data

def write_profile_shards(out_dir: str | Path, samples: int, max_frames: int, image_size: int, shards: int = 8) -> list[int]:
    """Caption samples with T/4..T frames (a smooth pattern plus noise: JPEGs of realistic size) -> frame counts."""
    import numpy as np

    from fvlm_cli.data.shards import ShardWriter, sample_key, sample_record

    rng = np.random.default_rng(0)
    lo = max(1, max_frames // 4)
    counts = [int(c) for c in rng.integers(lo, max_frames + 1, samples)]
    yy, xx = np.mgrid[0:image_size, 0:image_size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per = -(-samples // shards)
    for s in range(0, samples, per):
        with ShardWriter(out / f"profile-{s // per:06d}.tar") as w:
            for i in range(s, min(s + per, samples)):
                frames = []
                for t in range(counts[i]):
                    base = (np.stack([xx + 7 * t, yy + 3 * i, xx + yy]) * (255 / (2 * image_size))) % 255
                    noise = rng.integers(0, 24, (3, image_size, image_size))
                    frames.append(np.clip(base + noise, 0, 255).astype(np.uint8).transpose(1, 2, 0))
                messages = [{"role": "user", "content": "Describe this video."},
                            {"role": "assistant", "content": f"A pattern drifts to the right in clip {i}, frame by frame."}]
                rec = sample_record(f"p{i}", "profile", "sft", messages, [float(t) for t in range(counts[i])],
                                    media_type="video")
                w.write(sample_key(i, f"p{i}"), rec, frames)
            w.close()
    return counts


def profile_data(args: ProfileArgs) -> dict:
    from fvlm_cli.data.loader import build_train_loader
    from fvlm_cli.model.tokenizer import load_tokenizer
    from fvlm_cli.settings import ShardSet

    cfg, device, dtype = _setup(args)
    tok = load_tokenizer(cfg.model.tokenizer or cfg.model.llm)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="fvlm-profile-") as tmp:
        t0 = time.perf_counter()
        counts = write_profile_shards(tmp, cfg.profile.samples, args.frames, cfg.model.image_size)
        write_s = time.perf_counter() - t0
        cfg.data.train, cfg.data.text = [ShardSet(path=tmp)], []
        cfg.data.batch_size = args.batch_size
        for w in cfg.profile.workers:
            loader = build_train_loader(cfg, tok, stage=2, num_workers=w,
                                        pin_memory=cfg.profile.pin_memory and device.type == "cuda")
            it = iter(loader)
            t0 = time.perf_counter()
            next(it)  # workers start, first batch
            first_s = time.perf_counter() - t0
            for _ in range(max(0, args.warmup - 1)):
                next(it)
            samples = real = slots = 0
            t0 = time.perf_counter()
            for _ in range(args.steps):
                batch = next(it)
                fm = batch["frame_mask"]
                samples, real, slots = samples + fm.shape[0], real + int(fm.sum()), slots + fm.numel()
            secs = time.perf_counter() - t0
            loader.close()
            rows[str(w)] = {"workers": w, "first_batch_s": first_s, "batches": args.steps, "samples": samples,
                            "seconds": secs, "samples_per_s": samples / secs, "frames_per_s": real / secs,
                            "samples_per_s_per_worker": samples / secs / max(w, 1),
                            "mean_batch_size": samples / max(args.steps, 1),
                            "padded_frame_fraction": 1 - real / max(slots, 1)}
    res = _header("data", args, cfg, device, dtype)
    res.update({"image_size": cfg.model.image_size, "frame_budget": cfg.data.frame_budget,
                "shard_samples": len(counts), "mean_frames": sum(counts) / len(counts), "write_shards_s": write_s,
                "workers": rows})
    return res


# ---------------------------------------------------------------- bench

def profile_bench(args: ProfileArgs) -> dict:
    from fvlm_cli.eval import mcq

    cfg, device, dtype = _setup(args)
    model = _build(cfg, device).eval()
    if dtype == torch.bfloat16:
        model.to(torch.bfloat16)
    modes = modes_of(args, "bench")
    g = torch.Generator().manual_seed(0)
    V, size = model.llm.config.vocab_size, model.image_size
    qs = []
    for _ in range(cfg.profile.questions):  # prompt of S ids, K options of one token + <|im_end|> (id 2)
        ids = torch.randint(3, V, (1, args.text_tokens), generator=g)
        conts = [[[int(torch.randint(3, V, (1,), generator=g)), 2] for _ in range(cfg.profile.options)]]
        qs.append(mcq.Batch(torch.randn(1, args.frames, 3, size, size, generator=g),
                            torch.ones(1, args.frames, dtype=torch.bool), ids, torch.ones_like(ids),
                            torch.zeros(1, dtype=torch.long), conts))
    pdtype = next(model.parameters()).dtype

    def cat(batch):
        return mcq.Batch(torch.cat([q.frames for q in batch]).to(pdtype), torch.cat([q.frame_mask for q in batch]),
                         torch.cat([q.input_ids for q in batch]), torch.cat([q.attention_mask for q in batch]),
                         torch.cat([q.visual_pos for q in batch]), [c for q in batch for c in q.continuations])

    clock = Clock(device)

    def fast() -> tuple[float, list]:
        means, t0 = [], clock.start()
        for i in range(0, len(qs), args.batch_size):
            r = mcq.score_fast(model, cat(qs[i : i + args.batch_size]).to(device), modes)
            means += [s / n for m in modes for ss, nn in zip(r[m]["sum_nll"], r[m]["n_tokens"]) for s, n in zip(ss, nn)]
        clock.sync()
        return time.perf_counter() - t0, means

    def naive() -> tuple[float, list]:
        t0 = clock.start()
        per_q = [mcq.score_naive(model, cat([q]).to(device), modes) for q in qs]
        clock.sync()
        secs = time.perf_counter() - t0
        means = []  # in fast()'s order: per batch, mode-major
        for i in range(0, len(qs), args.batch_size):
            chunk = per_q[i : i + args.batch_size]
            means += [s / n for m in modes for r in chunk for s, n in zip(r[m]["sum_nll"][0], r[m]["n_tokens"][0])]
        return secs, means

    with torch.no_grad():
        for _ in range(args.warmup):
            fast()
        f = [fast() for _ in range(args.steps)]
        nv = [naive() for _ in range(max(1, min(args.steps, 2)))]  # the naive path is slow: at most two runs
    n = len(qs)
    fast_q, naive_q = statistics.median(t for t, _ in f) / n, statistics.median(t for t, _ in nv) / n
    diff = max(abs(a - b) for a, b in zip(f[0][1], nv[0][1]))
    res = _header("bench", args, cfg, device, dtype)
    res.update({"modes": modes, "questions": n, "options": cfg.profile.options,
                "seconds_per_question": {"fast": fast_q, "naive": naive_q}, "speedup": naive_q / fast_q,
                "max_abs_mean_nll_diff": diff})
    return res


PROFILERS = {"train": profile_train, "infer": profile_infer, "data": profile_data, "bench": profile_bench}


def run_profile(target: str, args: ProfileArgs) -> dict[str, Any]:
    if target not in PROFILERS:
        raise FvlmError(f"unknown profile target {target!r}; use one of {', '.join(TARGETS)}")
    for name in ("batch_size", "frames", "text_tokens", "steps"):
        if getattr(args, name) < 1:
            raise FvlmError(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        raise FvlmError("--warmup must be 0 or more")
    return PROFILERS[target](args)
