"""Scoring continuations from a shared prefix: a model capability beside `generate`.

For a batch of prompts (frames + text) and, per prompt, a list of continuations (token ids):
  1. DINO runs once over every real frame (`encode_frames`); its per-layer K/V serve every query of every mode.
  2. Per mode the visual tokens and the prompt run once on an `LLMStream` (`FoveatedVLM.prefill`).
  3. The prefix KV cache is replicated once per continuation (`fork_stream`: the continuations of all prompts
     side by side) and every continuation is run in one batched LLM step. The first continuation token is
     predicted from the prompt's last hidden state, exactly as `forward` predicts the first answer token.
  4. Greedy decoding can continue on the same prefix (`greedy`: the prefix is not re-run, DINO not
     re-encoded; equal to `generate_ids` at temperature 0).

`score_prefix_batch` does all of it and returns, per mode, the NLL of every continuation token (how the NLLs
are reduced to a score is the caller's protocol: eval/mcq.py) and the greedy tokens.

Written against `LLMStream`'s public state (`cache`, `kv_valid`, `next_pos`, `step()`) and the transformers
cache API (`batch_select_indices`, or legacy per-layer tuples), so it does not depend on how a stream builds
its cache.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from fvlm_cli.model.vlm import MODES


@dataclass
class PromptBatch:
    """Prompts padded together (the layout of `generate_ids`) and their continuations."""

    frames: torch.Tensor          # [B, T, 3, S, S]
    frame_mask: torch.Tensor      # [B, T] bool
    input_ids: torch.Tensor       # [B, S] right-padded prompts
    attention_mask: torch.Tensor  # [B, S]
    visual_pos: torch.Tensor      # [B]
    continuations: list[list[list[int]]] = field(default_factory=list)  # [B][K_b] token ids

    def to(self, device) -> "PromptBatch":
        return PromptBatch(self.frames.to(device), self.frame_mask.to(device), self.input_ids.to(device),
                           self.attention_mask.to(device), self.visual_pos.to(device), self.continuations)


def select_cache(cache, index: torch.Tensor):
    """A new KV cache whose row i is row `index[i]` of `cache` (repeats allowed); `cache` itself is left as it was,
    so its prefix can still be decoded. The tensors are gathered (copied) once; later steps grow the copy only."""
    if isinstance(cache, (tuple, list)):  # legacy: ((k, v), ...) per layer
        return tuple(tuple(t.index_select(0, index) for t in layer) for layer in cache)
    new = copy.copy(cache)
    if hasattr(cache, "layers"):  # transformers >= 4.56: a list of per-layer objects
        new.layers = [copy.copy(layer) for layer in cache.layers]
    elif hasattr(cache, "key_cache"):  # older DynamicCache: lists of per-layer tensors
        new.key_cache, new.value_cache = list(cache.key_cache), list(cache.value_cache)
    else:
        new = copy.deepcopy(cache)
    if hasattr(new, "batch_select_indices"):
        new.batch_select_indices(index)
    elif hasattr(new, "reorder_cache"):
        new.reorder_cache(index)
    else:
        raise TypeError(f"cannot replicate a {type(cache).__name__} KV cache")
    return new


def fork_stream(stream, index: torch.Tensor):
    """A stream whose row i continues row `index[i]` of `stream` (KV cache, valid positions and next position)."""
    try:  # a fresh stream sized for the fork (whatever per-batch state its constructor sets up) ...
        out = type(stream)(stream.llm, len(index), stream.kv_valid.device)
    except TypeError:  # ... or, if the constructor asks for more, a shallow copy
        out = copy.copy(stream)
    out.cache = select_cache(stream.cache, index)
    out.kv_valid = stream.kv_valid[index]
    out.next_pos = stream.next_pos[index]
    return out


def prefix(model, cache, flat_idx, text_emb: torch.Tensor, frame_mask: torch.Tensor, attention_mask: torch.Tensor,
           visual_pos: torch.Tensor, mode: str):
    """The visual + prompt prefix of one mode on an open stream, from DINO's cache (no re-encoding).

    Returns (stream, h_last [B, D]): h_last is the hidden state of each prompt's last token; it predicts the
    first continuation token.
    """
    B = frame_mask.shape[0]
    layout, hidden, stream = model.prefill(text_emb, None, frame_mask, attention_mask, visual_pos, mode,
                                           cache=cache, flat_idx=flat_idx)
    last = layout.valid.long().sum(1) - 1
    return stream, hidden[torch.arange(B, device=hidden.device), last]


def continuation_nll(model, stream, h_last: torch.Tensor, continuations: list[list[list[int]]],
                     pad_id: int = 0) -> list[list[list[float]]]:
    """The NLL of every token of every continuation after its prompt's prefix, all in one LLM step.

    continuations: [B][K_b] token ids. Returns [B][K_b][len] NLLs (nats, float32 log-softmax).
    """
    dev = h_last.device
    owners = [b for b, conts in enumerate(continuations) for _ in conts]
    flat = [c for conts in continuations for c in conts]
    if not flat:
        return [[] for _ in continuations]
    N, L = len(flat), max(max(len(c) for c in flat), 1)
    ids = torch.full((N, L), pad_id, dtype=torch.long, device=dev)
    valid = torch.zeros(N, L, dtype=torch.bool, device=dev)
    for i, c in enumerate(flat):
        if c:
            ids[i, : len(c)] = torch.tensor(c, dtype=torch.long, device=dev)
            valid[i, : len(c)] = True
    index = torch.tensor(owners, dtype=torch.long, device=dev)
    pred = [h_last[index][:, None]]  # token 0 is predicted by the prompt's last position
    if L > 1:  # token j by continuation token j-1; the last token's output predicts nothing, so it is not fed
        pred.append(fork_stream(stream, index).step(model.embed_text(ids[:, : L - 1]), valid[:, : L - 1]))
    pred = torch.cat(pred, dim=1)  # [N, L, D]
    nll = F.cross_entropy(model.llm.lm_head(pred[valid]).float(), ids[valid], reduction="none")
    per = torch.zeros(N, L, device=dev, dtype=nll.dtype).masked_scatter(valid, nll).tolist()
    out, i = [], 0
    for conts in continuations:
        out.append([per[i + k][: len(c)] for k, c in enumerate(conts)])
        i += len(conts)
    return out


def greedy(model, stream, h_last: torch.Tensor, max_new_tokens: int, stops: tuple[int, ...] = ()) -> list[list[int]]:
    """Greedy decoding on an open prefix stream (`generate_ids` at temperature 0, without re-running the prefix)."""
    B, dev = h_last.shape[0], h_last.device
    out: list[list[int]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    stop_t = torch.tensor(list(stops) or [-1], device=dev)
    h = h_last
    for step in range(max_new_tokens):
        nxt = model.llm.lm_head(h).float().argmax(-1)
        for b in range(B):
            if not done[b]:
                out[b].append(int(nxt[b]))
        done = done | torch.isin(nxt, stop_t)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        h = stream.step(model.embed_text(nxt[:, None]), (~done)[:, None])[:, 0]
    return out


@torch.no_grad()
def score_prefix_batch(model, batch: PromptBatch, modes: Sequence[str] = MODES, *, loglik: bool = True,
                       max_new_tokens: int = 0, stops: tuple[int, ...] = (), pad_id: int = 0,
                       timings: Optional[dict] = None) -> dict:
    """DINO once, one prefix per mode, then the continuations and/or greedy decoding from it.

    Returns {mode: {"nll": [B][K_b][len] (loglik), "generated": [B][ids] (max_new_tokens > 0)}}.
    `timings` (optional) receives seconds: "dino", and per mode "prefix/<mode>", "loglik/<mode>", "generate/<mode>".
    """
    for m in modes:
        if m not in MODES:
            raise ValueError(f"unknown mode {m!r}; expected one of {', '.join(MODES)}")
    t = timings if timings is not None else {}
    clock = _Clock(batch.frames.device)
    fm = batch.frame_mask.bool()
    cache, flat_idx = model.encode_frames(batch.frames, fm)
    text_emb = model.embed_text(batch.input_ids)
    t["dino"] = clock.lap()
    out = {}
    for mode in modes:
        stream, h_last = prefix(model, cache, flat_idx, text_emb, fm, batch.attention_mask, batch.visual_pos, mode)
        t[f"prefix/{mode}"] = clock.lap()
        res: dict = {}
        if loglik:
            res["nll"] = continuation_nll(model, stream, h_last, batch.continuations, pad_id)
            t[f"loglik/{mode}"] = clock.lap()
        if max_new_tokens > 0:  # after loglik: the continuations ran on a copy of the prefix cache
            res["generated"] = greedy(model, stream, h_last, max_new_tokens, stops)
            t[f"generate/{mode}"] = clock.lap()
        out[mode] = res
    return out


class _Clock:
    """Lap timer that waits for queued GPU work, so each lap is the time of the work it names."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.last = time.perf_counter()

    def lap(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        out, self.last = now - self.last, now
        return out
