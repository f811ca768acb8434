"""`fvlm compare-modes`: the three modes side by side on the same inputs (SPEC §5).

For each input and mode: the generated text, latency (seconds of model time and time to the first token; media
decoding is timed apart), the loss (mean NLL per token of `reference` + `<|im_end|>` as the answer) when a
reference is given, and the attention of each frame's query over that frame's patches:

  coarse_only     q_static reads every frame
  coarse_fine     the fine queries (llm_to_query of the coarse pass at frame t reads frame t+1; frame 1: q_init)
  autoregressive  the queries made step by step on the KV cache: q_init, then llm_to_query of each step's output
                  (re-run here frame by frame to collect them; `autoregressive_queries`)

Entropy (nats) is that of each query's attention over all 1+P keys (CLS included, as training validation logs
it), averaged over heads and frames: for the last layer and over all layers; `uniform` = log(1+P) is its maximum.
Heatmaps (PNG, one grid per input: rows = modes, columns = frames, at most `max_heatmap_frames` spread
uniformly): the attention over patches (CLS dropped, renormalised over the patches, averaged over heads),
reshaped to the patch grid and overlaid on the frame; one figure for the last layer, one averaged over layers.
All panels of a figure share one colour scale (its min to max), so modes and frames compare directly.

Writes out_dir/compare.json and out_dir/<k>_<stem>_attn_{last,mean}.png.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from fvlm_cli.model.vlm import MODES, LLMStream


@torch.no_grad()
def autoregressive_queries(model, text_emb: torch.Tensor, cache, flat_idx: torch.Tensor, frame_mask: torch.Tensor,
                           attention_mask: torch.Tensor, visual_pos: torch.Tensor) -> torch.Tensor:
    """The query that reads each frame in autoregressive mode: [B, T, Dq] (what `_autoregressive` uses).

    Frame 1: q_init; frame t+1: llm_to_query of the LLM output at frame t, with [text[:p], v_1..v_t] on the cache.
    The text after the frames cannot change them (causality), so it is not run.
    """
    B, S, D = text_emb.shape
    T = frame_mask.shape[1]
    dev = text_emb.device
    stream = LLMStream(model.llm, B, dev)
    p = torch.minimum(visual_pos.clamp(min=0), attention_mask.sum(1))
    P = int(p.max()) if B else 0
    if P > 0:  # question-first: system + user turn before the frames
        stream.step(text_emb[:, :P], torch.arange(P, device=dev)[None] < p[:, None])
    query = model.q_init.expand(B, -1)
    out = torch.zeros(B, T, model.query_dim, device=dev, dtype=query.dtype)
    for t in range(T):
        live = frame_mask[:, t]
        out[:, t] = query
        vis = torch.zeros(B, 1, D, device=dev, dtype=text_emb.dtype)
        if bool(live.any()):
            vis[live, 0] = model.project(model.encoder.query(query[live], cache.select(flat_idx[live, t]))).to(vis.dtype)
        h = stream.step(vis, live[:, None])
        query = torch.where(live[:, None], model.llm_to_query(h[:, 0]).to(query.dtype), query)
    return out


@torch.no_grad()
def mode_queries(model, mode: str, text_emb, cache, flat_idx, frame_mask, attention_mask, visual_pos) -> torch.Tensor:
    """The query of every frame in `mode`: [B, T, Dq]."""
    B, T = frame_mask.shape
    if mode == "coarse_only":
        return model.q_static.expand(B * T, -1).reshape(B, T, model.query_dim)
    if mode == "coarse_fine":
        return model.fine_queries(text_emb, cache, frame_mask, attention_mask, visual_pos)
    if mode == "autoregressive":
        return autoregressive_queries(model, text_emb, cache, flat_idx, frame_mask, attention_mask, visual_pos)
    raise ValueError(f"unknown mode {mode!r}")


def _entropy(attn: torch.Tensor) -> float:
    from fvlm_cli.eval.loss import entropy

    return entropy(attn)


def patch_heatmaps(attn: torch.Tensor, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """attn [L, T, H, 1+P] -> (last layer [T, g, g], mean over layers [T, g, g]): CLS dropped, patches renormalised,
    heads averaged."""
    a = attn[..., 1:].float()
    a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
    a = a.mean(2)  # [L, T, P]
    L, T, P = a.shape
    if P != grid * grid:
        raise ValueError(f"{P} patches do not form a {grid}x{grid} grid")
    a = a.reshape(L, T, grid, grid)
    return a[-1].cpu().numpy(), a.mean(0).cpu().numpy()


def _display_frames(frames: torch.Tensor) -> np.ndarray:
    """ImageNet-normalised [T, 3, S, S] -> uint8 [T, S, S, 3]."""
    from fvlm_cli.data.media import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (frames.detach().float().cpu() * std + mean).clamp(0, 1)
    return (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def plot_heatmaps(frames: np.ndarray, maps: dict[str, np.ndarray], path: Path, title: str,
                  max_frames: int = 16) -> Path:
    """A grid PNG: rows = modes, columns = frames; each panel the frame with its heatmap overlaid (matplotlib Agg)."""
    from matplotlib.figure import Figure

    T = frames.shape[0]
    cols = list(range(T)) if T <= max_frames else sorted({round(i * (T - 1) / (max_frames - 1)) for i in range(max_frames)})
    lo = min(float(m[cols].min()) for m in maps.values()) if maps and cols else 0.0
    hi = max(float(m[cols].max()) for m in maps.values()) if maps and cols else 1.0
    hi = max(hi, lo + 1e-6)  # uniform attention: a flat map, not a division by zero
    S = frames.shape[1]
    fig = Figure(figsize=(1.6 * len(cols) + 1.2, 1.7 * len(maps) + 0.6), dpi=100)
    axes = fig.subplots(len(maps), len(cols), squeeze=False)
    im = None
    for r, (mode, heat) in enumerate(maps.items()):
        for c, t in enumerate(cols):
            ax = axes[r][c]
            ax.imshow(frames[t])
            im = ax.imshow(heat[t], cmap="inferno", alpha=0.55, vmin=lo, vmax=hi, extent=(0, S, S, 0),
                           interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"frame {t + 1}", fontsize=8)
            if c == 0:
                ax.set_ylabel(mode, fontsize=8)
    fig.suptitle(title, fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=[a for row in axes for a in row], shrink=0.8, label="attention share of patch")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _media_source(m):
    """A path as a string (MediaError when it does not exist); bytes / PIL images as they are."""
    if isinstance(m, (str, Path)):
        if not Path(m).exists():
            from fvlm_cli.errors import MediaError

            raise MediaError(f"{m}: media file not found")
        return str(m)
    return m


def _without_name(msg: str, name: str) -> str:
    return msg[len(name) + 2:] if msg.startswith(f"{name}: ") else msg


def _safe_stem(path: str) -> str:
    stem = Path(path).stem or "input"
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)[:60]


def compare_modes(lm, media: Sequence[str], *, prompt: Optional[str] = None, reference: Optional[str] = None,
                  out_dir: str | Path = "runs/compare", max_new_tokens: int = 64, order: Optional[str] = None,
                  modes: Sequence[str] = MODES, max_heatmap_frames: int = 16, progress: bool = True,
                  on_error=None) -> dict:
    """Run every mode on every input (module docstring); returns what compare.json holds.

    `media`: paths (or bytes / PIL images). An input that cannot be read becomes {"input", "error"} in
    report["errors"] (and is passed to `on_error` at once); every other input is compared."""
    from fvlm_cli.data.chat import encode_chat
    from fvlm_cli.errors import FvlmError
    from fvlm_cli.infer.core import encode_prompts, load_clip, stop_ids
    from fvlm_cli.model.generate import generate_ids, pad_frames
    from fvlm_cli.progress import Progress

    model, tok = lm.model, lm.tokenizer
    dev = model.device
    order = order or lm.chat.order
    prompt = prompt or lm.chat.default_prompt
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise FvlmError(f"unknown mode {bad[0]!r}; use {', '.join(MODES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stops, pad = stop_ids(tok), int(tok.pad_token_id or 0)
    user = [{"role": "user", "content": prompt}]
    ids, am, vp = (x.to(dev) for x in encode_prompts(lm, [prompt], order))
    ref = None
    if reference is not None:
        ref = encode_chat(user + [{"role": "assistant", "content": reference}], tok, stage=2,
                          system_prompt=lm.chat.system_prompt, order=order, max_tokens=1 << 20)
    grid = model.encoder.patch_grid(model.image_size)
    was_training = model.training
    model.eval()
    bars = Progress(progress, prefix="fvlm compare-modes", unit="runs")
    bars.add("inputs x modes", len(media) * len(modes))
    report = {"model": lm.source, "prompt": prompt, "reference": reference, "order": order, "modes": list(modes),
              "inputs": [], "errors": []}
    warm = False
    try:
        for k, path in enumerate(media):
            t0 = time.perf_counter()
            try:  # an unreadable input is its own error record; the others are still compared
                frames, fm, counts = pad_frames([load_clip(_media_source(path), lm.media, model.image_size)])
            except FvlmError as e:
                report["errors"].append({"input": str(path), "error": _without_name(str(e), str(path))})
                if on_error is not None:
                    on_error(report["errors"][-1])
                bars.advance("inputs x modes", len(modes), failed=len(modes))
                continue
            decode_s = time.perf_counter() - t0
            frames, fm = frames.to(dev), fm.to(dev)
            if not warm:  # first-call overheads (allocator, kernels) must not be billed to the first mode
                generate_ids(model, frames, fm, ids, am, vp, mode=modes[0], max_new_tokens=1, pad_id=pad)
                warm = True
            entry: dict = {"input": str(path), "frames": counts[0], "decode_s": decode_s, "modes": {}}
            with torch.no_grad():
                cache, flat_idx = model.encode_frames(frames, fm)
                text_emb = model.embed_text(ids)
            maps_last, maps_mean = {}, {}
            for mode in modes:
                timings: dict = {}
                gen = generate_ids(model, frames, fm, ids, am, vp, mode=mode, max_new_tokens=max_new_tokens,
                                   stop_ids=stops, pad_id=pad, timings=timings)[0]
                text = tok.decode([i for i in gen if i not in stops], skip_special_tokens=True).strip()
                res = {"text": text, "seconds": timings["seconds"], "first_token_s": timings["first_token_s"],
                       "new_tokens": timings["new_tokens"],
                       "tokens_per_s": (timings["new_tokens"] - 1) / max(timings["seconds"] - timings["first_token_s"], 1e-9)
                       if timings["new_tokens"] > 1 else None,
                       "loss": None}
                if ref is not None:
                    r_ids = torch.tensor([ref.input_ids], device=dev)
                    with torch.no_grad():
                        r = model(frames, r_ids, loss_mask=torch.tensor([ref.loss_mask], device=dev), frame_mask=fm,
                                  visual_pos=torch.tensor([ref.visual_pos], device=dev), mode=mode, return_logits=False)
                    res["loss"] = -float(r["logps"][0]) / max(int(r["n_targets"][0]), 1)
                    res["loss_tokens"] = int(r["n_targets"][0])
                if cache is not None:
                    q = mode_queries(model, mode, text_emb, cache, flat_idx, fm, am, vp)
                    with torch.no_grad():
                        _, attn = model.encoder.query(q[fm], cache, return_attention=True)  # [L, T, H, 1+P]
                    res["attn_entropy"] = _entropy(attn[-1])
                    res["attn_entropy_all_layers"] = _entropy(attn)
                    res["attn_entropy_uniform"] = math.log(attn.shape[-1])
                    maps_last[mode], maps_mean[mode] = patch_heatmaps(attn, grid)
                entry["modes"][mode] = res
                bars.advance("inputs x modes")
            if maps_last:
                shown = _display_frames(frames[0, fm[0]])
                stem = f"{k:02d}_{_safe_stem(str(path))}"
                entry["heatmaps"] = {
                    "last": str(plot_heatmaps(shown, maps_last, out / f"{stem}_attn_last.png",
                                              f"{Path(path).name}: query attention, last layer", max_heatmap_frames)),
                    "mean": str(plot_heatmaps(shown, maps_mean, out / f"{stem}_attn_mean.png",
                                              f"{Path(path).name}: query attention, mean over layers", max_heatmap_frames)),
                }
            report["inputs"].append(entry)
    finally:
        bars.close()
        model.train(was_training)
    (out / "compare.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report
