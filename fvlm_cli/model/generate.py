"""Generation in all three modes on an incremental KV cache (the prefix is never re-run per token).

Tensors only: frames, token ids and masks in, token ids out. `generate_ids` is batched, padded per batch
exactly as in training, so a sample's output does not depend on its batch neighbours. Files, prompts and
text live one level up, in fvlm_cli.infer.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch

from fvlm_cli.model.vlm import MODES


def _process_logits(logits: torch.Tensor, seen: torch.Tensor, temperature: float, top_p: float,
                    repetition_penalty: float, gens: list[torch.Generator] | None) -> torch.Tensor:
    """logits: [B, V] -> next ids [B]. Greedy at temperature 0. `gens`: one generator per row (seeded sampling:
    a row draws the same tokens whatever its batch neighbours)."""
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
    probs = probs / probs.sum(-1, keepdim=True)
    if gens is None:
        return torch.multinomial(probs, 1)[:, 0]
    return torch.cat([torch.multinomial(probs[b: b + 1], 1, generator=g)[:, 0] for b, g in enumerate(gens)])


@torch.no_grad()
def generate_ids(model, frames: torch.Tensor, frame_mask: torch.Tensor, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor, visual_pos: torch.Tensor, *, mode: str = "autoregressive",
                 max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                 repetition_penalty: float = 1.0, stop_ids: tuple[int, ...] = (), pad_id: int = 0,
                 seed: int | None = None, timings: dict | None = None,
                 on_step: Optional[Callable[[list], Optional[list]]] = None) -> list[list[int]]:
    """Batched decoding. input_ids is the right-padded prompt (ending with `<|im_start|>assistant\\n`).

    `on_step(tokens)`: after each step, each row's new token id, or None for a row that had already stopped; it may
    return row indices to stop now (a stop string was reached, the client went away)."""
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
    gens = None if seed is None else [torch.Generator(device=dev).manual_seed(seed) for _ in range(B)]
    seen = input_ids.masked_fill(attention_mask == 0, pad_id)
    out = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    stops = torch.tensor(list(stop_ids) or [-1], device=dev)
    for step in range(max_new_tokens):
        nxt = _process_logits(model.llm.lm_head(h), seen, temperature, top_p, repetition_penalty, gens)
        if step == 0 and timings is not None:
            timings["first_token_s"] = time.perf_counter() - t0
        step_ids = [None if bool(done[b]) else int(nxt[b]) for b in range(B)]
        for b, i in enumerate(step_ids):
            if i is not None:
                out[b].append(i)
        cut = on_step(step_ids) if on_step is not None else None
        live = ~done
        done = done | torch.isin(nxt, stops)
        for b in cut or ():
            done[b] = True
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        seen = torch.cat([seen, torch.where(live, nxt, pad_id)[:, None]], dim=1)
        h = stream.step(model.embed_text(nxt[:, None]), (~done)[:, None])[:, 0]
    if timings is not None:
        timings["seconds"] = time.perf_counter() - t0
        timings["new_tokens"] = sum(len(o) for o in out)
    return out


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


def pad_text(seqs: list[list[int]], visual_pos: list[int], pad_id: int):
    S = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), S), pad_id, dtype=torch.long)
    am = torch.zeros(len(seqs), S, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        am[i, : len(s)] = 1
    return ids, am, torch.tensor(visual_pos, dtype=torch.long)

