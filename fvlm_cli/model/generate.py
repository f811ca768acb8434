"""Generation in all three modes on an incremental KV cache (the prefix is never re-run per token).

`generate(...)` is batched: several videos/images and prompts at once, padded per batch exactly as
in training, so a sample's output does not depend on its batch neighbours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from fvlm_cli.model.vlm import MODES


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    mode: str
    frames: int
    seconds: float
    first_token_s: float = 0.0
    extra: dict = field(default_factory=dict)


def _process_logits(logits: torch.Tensor, seen: torch.Tensor, temperature: float, top_p: float,
                    repetition_penalty: float, gen: torch.Generator | None) -> torch.Tensor:
    """logits: [B, V] -> next ids [B]. Greedy at temperature 0."""
    logits = logits.float()
    if repetition_penalty != 1.0:
        picked = logits.gather(1, seen)
        picked = torch.where(picked > 0, picked / repetition_penalty, picked * repetition_penalty)
        logits = logits.scatter(1, seen, picked)
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the top token
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(1, order, sorted_p)
    return torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, generator=gen)[:, 0]


@torch.no_grad()
def generate_ids(model, frames: torch.Tensor, frame_mask: torch.Tensor, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor, visual_pos: torch.Tensor, *, mode: str = "autoregressive",
                 max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                 repetition_penalty: float = 1.0, stop_ids: tuple[int, ...] = (), pad_id: int = 0,
                 seed: int | None = None, timings: dict | None = None) -> list[list[int]]:
    """Batched decoding. input_ids is the right-padded prompt (ending with `<|im_start|>assistant\\n`)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    t0 = time.perf_counter()
    B, S = input_ids.shape
    dev = input_ids.device
    frame_mask = frame_mask.bool()
    layout, hidden, stream = model.prefill(model.embed_text(input_ids), frames, frame_mask, attention_mask,
                                           visual_pos, mode)
    last = layout.valid.long().sum(1) - 1
    h = hidden[torch.arange(B, device=dev), last]  # [B, D]
    gen = torch.Generator(device=dev).manual_seed(seed) if seed is not None else None
    seen = input_ids.masked_fill(attention_mask == 0, pad_id)
    out = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    stops = torch.tensor(list(stop_ids) or [-1], device=dev)
    for step in range(max_new_tokens):
        nxt = _process_logits(model.llm.lm_head(h), seen, temperature, top_p, repetition_penalty, gen)
        if step == 0 and timings is not None:
            timings["first_token_s"] = time.perf_counter() - t0
        for b in range(B):
            if not done[b]:
                out[b].append(int(nxt[b]))
        live = ~done
        done = done | torch.isin(nxt, stops)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        seen = torch.cat([seen, torch.where(live, nxt, pad_id)[:, None]], dim=1)
        h = stream.step(model.embed_text(nxt[:, None]), (~done)[:, None])[:, 0]
    if timings is not None:
        timings["seconds"] = time.perf_counter() - t0
        timings["new_tokens"] = sum(len(o) for o in out)
    return out


def prepare_media(paths, media_cfg, image_size: int):
    """Load each path with the one media policy; images replicated to media_cfg.image_frames.
    Returns (frames [B, T, 3, S, S], frame_mask [B, T], frame counts)."""
    from fvlm_cli.data.media import frames_to_tensor, load_media, replicate

    clips = []
    for p in paths:
        clip = load_media(p, fps=media_cfg.fps, max_frames=media_cfg.max_frames, image_size=image_size)
        f = replicate(clip.frames, media_cfg.image_frames) if clip.is_image else clip.frames
        clips.append(frames_to_tensor(f))
    return pad_frames(clips)


def pad_frames(clips: list[torch.Tensor]):
    """list of [T_i, 3, S, S] -> frames [B, T, 3, S, S], frame_mask [B, T], counts."""
    T = max((c.shape[0] for c in clips), default=0)
    B = len(clips)
    size = clips[0].shape[-1] if clips else 1
    frames = torch.zeros(B, T, 3, size, size)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, c in enumerate(clips):
        frames[i, : c.shape[0]] = c
        mask[i, : c.shape[0]] = True
    return frames, mask, [c.shape[0] for c in clips]


def generate(lm, media: list, prompt: str | list[str] | None = None, *, mode: str = "autoregressive",
             max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0, repetition_penalty: float = 1.0,
             order: str | None = None, seed: int | None = None, device: str | None = None) -> list[Generation]:
    """Caption / answer for each media path (video or image) with a loaded model (`load_model`)."""
    from fvlm_cli.data.chat import encode_prompt

    model, tok = lm.model, lm.tokenizer
    dev = model.device
    prompts = prompt if isinstance(prompt, list) else [prompt or lm.chat.default_prompt] * len(media)
    t0 = time.perf_counter()
    frames, frame_mask, counts = prepare_media(media, lm.media, model.image_size)
    order = order or lm.chat.order
    encs = [encode_prompt([{"role": "user", "content": p}], tok, system_prompt=lm.chat.system_prompt, order=order)
            for p in prompts]
    ids, am, vp = pad_text([e.input_ids for e in encs], [e.visual_pos for e in encs], tok.pad_token_id or 0)
    timings: dict = {}
    stop = tuple(i for i in {tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id} if i is not None and i >= 0)
    out = generate_ids(model, frames.to(dev), frame_mask.to(dev), ids.to(dev), am.to(dev), vp.to(dev), mode=mode,
                       max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                       repetition_penalty=repetition_penalty, stop_ids=stop, pad_id=tok.pad_token_id or 0, seed=seed,
                       timings=timings)
    secs = time.perf_counter() - t0
    results = []
    for o, n in zip(out, counts):
        text = tok.decode([i for i in o if i not in stop], skip_special_tokens=True).strip()
        results.append(Generation(text, o, mode, n, secs, timings.get("first_token_s", 0.0)))
    return results


def pad_text(seqs: list[list[int]], visual_pos: list[int], pad_id: int):
    S = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), S), pad_id, dtype=torch.long)
    am = torch.zeros(len(seqs), S, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        am[i, : len(s)] = 1
    return ids, am, torch.tensor(visual_pos, dtype=torch.long)


caption_media = generate
