"""FoveatedVLM: DINOv2 deep-query encoder + a causal LM, one visual token per frame.

Sequences are packed per sample: [text[:p], v_1..v_T, text[p:]] with p = `visual_pos` (0 for
video-first, the end of the first user turn for question-first), then right-padded. Padded frames
and padded text therefore never enter a sample's sequence and position ids stay contiguous: a
sample's outputs do not depend on what else is in the batch.

Modes (SPEC §2.3):
  coarse_only     every frame is read with q_static
  coarse_fine     coarse tokens -> LLM over [text[:p], visual] only (exact by causality, much cheaper)
                  -> llm_to_query(hidden at frame t) reads frame t+1 (frame 1: q_init) -> fine tokens
  autoregressive  q_init reads frame 1 -> one LLM step (KV cache) -> query for frame 2 -> ...;
                  the text then continues on the same cache

The hot path (SPEC §9.1). `forward` never reads a device value back to the host: every shape comes from a
tensor's shape or from a host-side bound (`Bounds`, computed by the training loop from the batch while it is
still on the host), the packed layout is index arithmetic on device tensors, and padded frame slots are run
through DINO and masked out rather than dropped (a data-dependent shape is a host sync). Without bounds, eager
callers (evaluation, generation) read the bounds from the tensors once (one sync, outside training) and a
compiled forward falls back to the static worst case (S), which is exact but pads the coarse pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from fvlm_cli.model.encoder import FoveatedEncoder, FrameCache

MODES = ("coarse_only", "coarse_fine", "autoregressive")


@dataclass
class Layout:
    """Where each element of each sample sits in the packed sequence ([B, L] after padding)."""

    index: torch.Tensor     # [B, L] row of the source table (text rows, then visual rows)
    valid: torch.Tensor     # [B, L] bool
    text_pos: torch.Tensor  # [B, S] packed position of text token j, -1 for padding / not included
    prev_pos: torch.Tensor  # [B, S] packed position whose output predicts text token j, -1 if none
    vis_pos: torch.Tensor   # [B, T] packed position of frame t, -1 for padded frames


@dataclass
class Bounds:
    """Host-side upper bounds that give the forward static shapes without reading device values.

    max_prefix: the largest `visual_pos` in the batch (the question-first prefix; 0 = video first)
    max_targets: the number of loss targets in the batch (loss_mask & attention_mask summed)
    """

    max_prefix: int | None = None
    max_targets: int | None = None

    @classmethod
    def of(cls, visual_pos: torch.Tensor, loss_mask: torch.Tensor | None, attention_mask: torch.Tensor | None,
           repeat: int = 1) -> "Bounds":
        """From a batch's host (CPU) tensors: free, no device involved."""
        mp = int(visual_pos.max()) if visual_pos.numel() else 0
        if loss_mask is None:
            return cls(mp, None)
        m = loss_mask.bool() if attention_mask is None else loss_mask.bool() & attention_mask.bool()
        return cls(mp, int(m.sum()) * repeat)


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def prefix_bound(visual_pos: torch.Tensor, S: int, max_prefix: int | None) -> int:
    """How many text positions the prefix [text[:p]] can take: the host bound, else read once (eager), else S."""
    if max_prefix is None:
        if _compiling() or visual_pos.numel() == 0:
            return S if visual_pos.numel() else 0
        max_prefix = int(visual_pos.max())  # eager callers without bounds (eval, generation): one read
    return max(0, min(int(max_prefix), S))


def build_layout(attention_mask: torch.Tensor, frame_mask: torch.Tensor, visual_pos: torch.Tensor,
                 text: str = "all", max_prefix: int | None = None) -> Layout:
    """text='all': [text[:p], visual, text[p:]]; text='prefix': [text[:p], visual] (the coarse pass).

    Index arithmetic on the device, no per-sample loop: L = S + T ('all') or P + T ('prefix', P from
    `prefix_bound`), a static shape; each sample is right-padded to it."""
    B, S = attention_mask.shape
    T = frame_mask.shape[1]
    dev = attention_mask.device
    fm = frame_mask.bool()
    n = attention_mask.long().sum(1, keepdim=True)                        # [B, 1] text tokens
    p = torch.minimum(visual_pos.long().clamp(min=0)[:, None], n)          # [B, 1] prefix length
    nf = fm.long().sum(1, keepdim=True)                                    # [B, 1] real frames
    j = torch.arange(S, device=dev)[None]
    none = torch.full((), -1, dtype=torch.long, device=dev)
    if text == "all":
        L = S + T
        text_pos = torch.where(j < p, j, torch.where(j < n, j + nf, none))
        length = n + nf
    else:
        L = prefix_bound(visual_pos, S, max_prefix) + T
        text_pos = torch.where(j < p, j, none)
        length = p + nf
    L = max(L, 1)
    vis_pos = torch.where(fm, p + fm.long().cumsum(1) - 1, none)
    prev_pos = torch.where(text_pos > 0, text_pos - 1, none)
    text_rows = (torch.arange(B, device=dev)[:, None] * S + j).expand(B, S)
    vis_rows = (B * S + torch.arange(B * T, device=dev).view(B, T))
    index = torch.zeros(B, L + 1, dtype=torch.long, device=dev)  # column L takes what has no position
    index = index.scatter(1, torch.where(text_pos >= 0, text_pos, L), text_rows)
    index = index.scatter(1, torch.where(vis_pos >= 0, vis_pos, L), vis_rows)[:, :L]
    valid = torch.arange(L, device=dev)[None] < length
    return Layout(index, valid, text_pos, prev_pos, vis_pos)


def causal_mask(valid: torch.Tensor, dtype: torch.dtype, eager: bool) -> torch.Tensor:
    """[B, 1, L, L] mask of a right-padded batch: causal, real keys only, and a padded query sees itself (no NaN
    rows). Passed to the LLM as a prepared 4D mask, so transformers does not inspect the padding (a host read)."""
    L = valid.shape[1]
    i = torch.arange(L, device=valid.device)
    allowed = ((i[None, :] <= i[:, None])[None] & valid[:, None, :]) | torch.eye(L, dtype=torch.bool, device=valid.device)[None]
    if eager:
        return torch.zeros(allowed.shape, dtype=dtype, device=valid.device).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    return allowed[:, None]


class LLMStream:
    """Incremental LLM state for a batch: a KV cache plus which cached positions are real.

    Every step may carry padding (`valid` False); padded positions are masked out of every later
    query and take no position id, so each sample sees exactly its own contiguous sequence.
    """

    def __init__(self, llm: nn.Module, batch_size: int, device: torch.device):
        self.llm = llm
        self.cache = self.new_cache(llm.config)  # made up front and filled in place: no legacy-cache conversion
        self.kv_valid = torch.zeros(batch_size, 0, dtype=torch.bool, device=device)
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)

    _cache_kwargs: dict = {}

    @staticmethod
    def new_cache(config):
        """An empty DynamicCache (transformers >= 4.56 takes the config; 4.45-4.55 take nothing)."""
        from transformers import DynamicCache

        try:
            return DynamicCache(config=config)
        except TypeError:
            return DynamicCache()

    @classmethod
    def cache_kwarg(cls, module: nn.Module) -> str:
        """The name the LLM's forward takes its cache by: `cache` in transformers 5.x (where `past_key_values`
        is deprecated with a FutureWarning), `past_key_values` in 4.x."""
        import inspect

        fn = type(module).forward
        if fn not in cls._cache_kwargs:
            cls._cache_kwargs[fn] = "cache" if "cache" in inspect.signature(fn).parameters else "past_key_values"
        return cls._cache_kwargs[fn]

    def step(self, embeds: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """embeds: [B, q, D], valid: [B, q] -> last hidden states [B, q, D]."""
        B, q, _ = embeds.shape
        past = self.kv_valid.shape[1]
        kv_valid = torch.cat([self.kv_valid, valid], dim=1)  # [B, K]
        K = past + q
        qi = torch.arange(past, K, device=embeds.device)[:, None]  # absolute query index [q, 1]
        kj = torch.arange(K, device=embeds.device)[None, :]
        causal = (kj <= qi)[None]  # [1, q, K]
        allowed = (kv_valid[:, None, :] & causal) | (kj == qi)[None]  # a padded query sees itself: no NaN rows
        if getattr(self.llm.config, "_attn_implementation", "sdpa") == "eager":
            mask = torch.zeros(allowed.shape, dtype=embeds.dtype, device=embeds.device)
            mask = mask.masked_fill(~allowed, torch.finfo(embeds.dtype).min)[:, None]
        else:
            mask = allowed[:, None]
        pos = self.next_pos[:, None] + valid.long().cumsum(1) - 1
        out = self.llm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos.clamp(min=0),
                             use_cache=True, **{self.cache_kwarg(self.llm.model): self.cache})
        self.kv_valid = kv_valid
        self.next_pos = self.next_pos + valid.long().sum(1)
        return out.last_hidden_state


class FoveatedVLM(nn.Module):
    def __init__(self, llm: nn.Module, dino: nn.Module, *, query_dim: int = 384, visual_scale: float = 0.14,
                 image_size: int = 224):
        super().__init__()
        self.encoder = FoveatedEncoder(dino, query_dim)
        self.llm = llm
        d_dino, d_llm = dino.config.hidden_size, llm.config.hidden_size
        self.dino_to_llm = nn.Linear(d_dino, d_llm)
        self.llm_to_query = nn.Linear(d_llm, query_dim)
        # std 1.0, not a small init: small queries give uniform attention and then fine == coarse.
        self.q_static = nn.Parameter(torch.randn(1, query_dim))
        self.q_init = nn.Parameter(torch.randn(1, query_dim))
        self.visual_scale = visual_scale
        self.image_size = image_size
        self.query_dim = query_dim

    # ---- pieces --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.q_static.device

    def unused_parameters(self, mode: str) -> set[str]:
        """Names of the parameters a forward in `mode` never uses, whatever the batch (text-only batches run the
        vision path on one masked slot, see `encode_slots`). DDP ignores them instead of searching every step."""
        names = {n for n, _ in self.named_parameters() if n.endswith("embeddings.mask_token")}
        if mode == "coarse_only":
            names |= {"q_init", "llm_to_query.weight", "llm_to_query.bias"}
        elif mode == "autoregressive":
            names |= {"q_static"}
        return names

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(input_ids)

    def encode_frames(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> tuple[FrameCache | None, torch.Tensor]:
        """Run DINO once over the real frames only (compact cache). Returns the cache and flat_idx [B, T] (-1 = padded).

        Reads the frame count back (a data-dependent shape): for evaluation and generation, not the training step."""
        B, T = frame_mask.shape
        flat_idx = torch.full((B, T), -1, dtype=torch.long, device=frame_mask.device)
        n = int(frame_mask.sum())
        flat_idx[frame_mask] = torch.arange(n, device=frame_mask.device)
        if n == 0:
            return None, flat_idx
        return self.encoder.encode(frames[frame_mask]), flat_idx

    def encode_slots(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> tuple[FrameCache | None, torch.Tensor]:
        """DINO over every frame slot (B x T rows, padded slots zeroed and masked later): static shapes, no host read.
        Returns the cache (`slots=True`) and flat_idx [B, T] (row b*T + t, -1 = padded)."""
        B, T = frame_mask.shape
        rows = torch.arange(B * T, device=frame_mask.device).view(B, T)
        flat_idx = torch.where(frame_mask, rows, torch.full_like(rows, -1))
        if T == 0:
            return None, flat_idx
        pixels = torch.where(frame_mask[..., None, None, None], frames, frames.new_zeros(()))  # NaN-safe padding
        cache = self.encoder.encode(pixels.flatten(0, 1))
        cache.slots = True
        return cache, flat_idx

    def project(self, z: torch.Tensor) -> torch.Tensor:
        return self.visual_scale * self.dino_to_llm(z)

    def read(self, queries: torch.Tensor, cache: FrameCache | None, frame_mask: torch.Tensor) -> torch.Tensor:
        """queries: [B, T, Dq] (one per frame) -> visual tokens [B, T, D_llm] (zeros at padded frames)."""
        B, T = frame_mask.shape
        if cache is not None and cache.slots:  # one cache row per slot: dense, no host read
            tok = self.project(self.encoder.query(queries.reshape(B * T, -1), cache)).view(B, T, -1)
            return torch.where(frame_mask[..., None], tok, tok.new_zeros(()))
        out = torch.zeros(B, T, self.llm.config.hidden_size, device=queries.device, dtype=self.dino_to_llm.weight.dtype)
        if cache is None:
            return out
        tok = self.project(self.encoder.query(queries[frame_mask], cache))
        out = out.to(tok.dtype)
        out[frame_mask] = tok
        return out

    @staticmethod
    def pack(text_emb: torch.Tensor, vis: torch.Tensor, layout: Layout) -> torch.Tensor:
        """Text [B, S, D] + visual [B, T, D] embeddings -> the packed, right-padded sequence [B, L, D]."""
        D = text_emb.shape[-1]
        table = torch.cat([text_emb.reshape(-1, D), vis.to(text_emb.dtype).reshape(-1, D)], dim=0)
        return table[layout.index] * layout.valid[..., None].to(table.dtype)

    def _run_packed(self, text_emb: torch.Tensor, vis: torch.Tensor, layout: Layout) -> torch.Tensor:
        """One full LLM pass over a packed, right-padded sequence -> hidden [B, L, D]."""
        B = text_emb.shape[0]
        emb = self.pack(text_emb, vis, layout)
        pos = torch.arange(emb.shape[1], device=emb.device)[None].expand(B, -1)
        eager = getattr(self.llm.config, "_attn_implementation", "sdpa") == "eager"
        mask = causal_mask(layout.valid, emb.dtype, eager)
        out = self.llm.model(inputs_embeds=emb, attention_mask=mask, position_ids=pos, use_cache=False)
        return out.last_hidden_state

    def fine_queries(self, text_emb, cache, frame_mask, attention_mask, visual_pos, max_prefix: int | None = None):
        """The coarse pass: q_static tokens -> LLM over [text[:p], visual] -> queries [B, T, Dq] for the fine read."""
        B, T = frame_mask.shape
        coarse = self.read(self.q_static.expand(B * T, -1).reshape(B, T, self.query_dim), cache, frame_mask)
        layout = build_layout(attention_mask, frame_mask, visual_pos, text="prefix", max_prefix=max_prefix)
        h = self._run_packed(text_emb, coarse, layout)
        h_vis = h.gather(1, layout.vis_pos.clamp(min=0)[..., None].expand(-1, -1, h.shape[-1]))  # [B, T, D]
        q = self.llm_to_query(h_vis)
        # frame t+1 is read with the query made at frame t; frame 1 with q_init
        return torch.cat([self.q_init.expand(B, 1, -1).to(q.dtype), q[:, :-1]], dim=1)[:, :T]

    def _frame_token(self, query: torch.Tensor, cache: FrameCache, flat_idx: torch.Tensor, t: int,
                     live: torch.Tensor, dtype: torch.dtype, slot: FrameCache | None = None) -> torch.Tensor:
        """The visual token of frame t of every sample, read with `query` [B, Dq] -> [B, 1, D] (zeros where padded).
        `slot`: slot t of a slots cache (`FrameCache.per_slot`)."""
        B, T = flat_idx.shape
        if slot is not None:  # every sample computed, padded ones masked
            tok = self.project(self.encoder.query(query, slot)).to(dtype)
            return torch.where(live[:, None], tok, tok.new_zeros(()))[:, None]
        vis = torch.zeros(B, 1, self.llm.config.hidden_size, device=query.device, dtype=dtype)
        if bool(live.any()):  # compact cache (evaluation): only the live rows exist
            vis[live, 0] = self.project(self.encoder.query(query[live], cache.select(flat_idx[live, t]))).to(dtype)
        return vis

    def _autoregressive(self, text_emb, cache, flat_idx, frame_mask, attention_mask, visual_pos, layout,
                        max_prefix: int | None = None):
        """Frame by frame on a KV cache. Returns (hidden in `layout` order [B, L, D], the open stream).

        Steps: the prefix (P = `prefix_bound` positions, padded per sample), one step per frame slot, then the text
        after the frames (S positions, padded). Their outputs are laid side by side and gathered into the packed
        layout in one go."""
        B, S, D = text_emb.shape
        T = frame_mask.shape[1]
        dev = text_emb.device
        stream = LLMStream(self.llm, B, dev)
        n_text = attention_mask.long().sum(1)
        p = torch.minimum(visual_pos.long().clamp(min=0), n_text)
        P = prefix_bound(visual_pos, S, max_prefix)
        outs = []
        if P > 0:  # question-first: system + user turn before the frames
            outs.append(stream.step(text_emb[:, :P], torch.arange(P, device=dev)[None] < p[:, None]))
        query = self.q_init.expand(B, -1)
        slots = cache.per_slot(B, T) if cache is not None and cache.slots else [None] * T
        for t in range(T):
            live = frame_mask[:, t]
            h = stream.step(self._frame_token(query, cache, flat_idx, t, live, text_emb.dtype, slots[t]), live[:, None])
            outs.append(h)
            if t < T - 1:  # the query after the last frame would read nothing
                query = torch.where(live[:, None], self.llm_to_query(h[:, 0]).to(query.dtype), query)
        # the text after the frames, right-padded per sample (S positions: a static bound)
        n_suf = n_text - p
        q_idx = torch.arange(S, device=dev)[None]
        if S > 0:
            src = (p[:, None] + q_idx).clamp(max=S - 1)
            outs.append(stream.step(text_emb.gather(1, src[..., None].expand(-1, -1, D)), q_idx < n_suf[:, None]))
        hs = torch.cat(outs, dim=1) if outs else text_emb.new_zeros(B, 1, D)  # [B, P + T + S, D] stream order
        # stream column of each packed position: text j < p -> j; frame t -> P + t; text j >= p -> P + T + j - p
        L = layout.index.shape[1]
        col_text = torch.where(q_idx < p[:, None], q_idx, P + T + q_idx - p[:, None])
        col_vis = (P + torch.arange(T, device=dev))[None].expand(B, T)
        col = torch.zeros(B, L + 1, dtype=torch.long, device=dev)
        col = col.scatter(1, torch.where(layout.text_pos >= 0, layout.text_pos, L), col_text)
        col = col.scatter(1, torch.where(layout.vis_pos >= 0, layout.vis_pos, L), col_vis)[:, :L]
        hidden = hs.gather(1, col[..., None].expand(-1, -1, D))
        return torch.where(layout.valid[..., None], hidden, hidden.new_zeros(())), stream

    def visual_tokens(self, frames, frame_mask, mode, text_emb=None, attention_mask=None, visual_pos=None, cache=None,
                      max_prefix: int | None = None):
        """The visual tokens a non-autoregressive mode feeds the LLM: [B, T, D_llm] (pass `cache` to reuse DINO)."""
        B, T = frame_mask.shape
        if cache is None:
            cache, _ = self.encode_frames(frames, frame_mask)
        if mode == "coarse_only":
            return self.read(self.q_static.expand(B * T, -1).reshape(B, T, self.query_dim), cache, frame_mask)
        queries = self.fine_queries(text_emb, cache, frame_mask, attention_mask, visual_pos, max_prefix)
        return self.read(queries, cache, frame_mask)

    def prefill(self, text_emb, frames, frame_mask, attention_mask, visual_pos, mode, cache=None, flat_idx=None):
        """Run a prompt in `mode` onto an open KV cache (generation, MCQ scoring).

        Returns (layout, hidden [B, L, D], stream). Pass `cache`/`flat_idx` from `encode_frames` to reuse DINO."""
        if cache is None:
            cache, flat_idx = self.encode_frames(frames, frame_mask)
        layout = build_layout(attention_mask, frame_mask, visual_pos)
        if mode == "autoregressive":
            hidden, stream = self._autoregressive(text_emb, cache, flat_idx, frame_mask, attention_mask, visual_pos, layout)
        else:
            vis = self.visual_tokens(frames, frame_mask, mode, text_emb, attention_mask, visual_pos, cache=cache)
            stream = LLMStream(self.llm, text_emb.shape[0], text_emb.device)
            hidden = stream.step(self.pack(text_emb, vis, layout), layout.valid)
        return layout, hidden, stream

    # ---- the contract ---------------------------------------------------------------------
    def forward(self, frames: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None, frame_mask: torch.Tensor | None = None,
                visual_pos: torch.Tensor | None = None, mode: str = "coarse_fine", return_logits: bool = True,
                bounds: Bounds | None = None, repeat_frames: int = 1) -> dict:
        """frames: [B, T, 3, H, W] (ImageNet-normalised), input_ids/attention_mask/loss_mask: [B, S],
        frame_mask: [B, T] bool, visual_pos: [B] (text index the frames are inserted before; 0 = video first).

        Returns {"loss": mean CE over targets (loss_mask == 1), "logits": [B, S, V] output at each text
        position (predicting token s+1), "token_logps": [B, S] log-prob of each target token (0 elsewhere),
        "logps": [B] their sum, "n_targets": [B]}. Text token j is predicted from the element before it,
        so the first text token after the frames is predicted from the last visual position.

        bounds: host-side shape bounds (`Bounds.of(...)` on the CPU batch) so that nothing is read back.
        repeat_frames: k > 1 when the text batch is k x the frame batch (DPO: chosen rows, then rejected rows);
        text row r uses frames[r % B]. DINO's patch pass runs once per video, its K/V shared by the k rows.
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        bounds = bounds or Bounds()
        R, S = input_ids.shape
        dev = input_ids.device
        if frame_mask is None:
            frame_mask = torch.ones(frames.shape[:2], dtype=torch.bool, device=dev)
        frame_mask = frame_mask.bool()
        need = 2 if mode == "autoregressive" else 1  # AR: frame 1's output makes frame 2's query (llm_to_query)
        if frames.dim() == 5 and frames.shape[1] < need:  # masked slots keep every parameter used (static for DDP)
            pad = need - frames.shape[1]
            frames = torch.cat([frames, frames.new_zeros(frames.shape[0], pad, *frames.shape[2:])], 1)
            frame_mask = torch.cat([frame_mask, frame_mask.new_zeros(frame_mask.shape[0], pad)], 1)
        if attention_mask is None:
            attention_mask = torch.ones(R, S, dtype=torch.long, device=dev)
        if loss_mask is None:
            loss_mask = attention_mask
        if visual_pos is None:
            visual_pos = torch.zeros(R, dtype=torch.long, device=dev)
        text_emb = self.embed_text(input_ids)
        cache, flat_idx = self.encode_slots(frames, frame_mask)
        if repeat_frames > 1:  # share one patch pass between the k text rows of each video
            B, T = frame_mask.shape
            if cache is not None:
                cache = cache.repeat(repeat_frames)
            frame_mask = frame_mask.repeat(repeat_frames, 1)
            rows = torch.arange(R * T, device=dev).view(R, T)
            flat_idx = torch.where(frame_mask, rows, torch.full_like(rows, -1))
        layout = build_layout(attention_mask, frame_mask, visual_pos)
        if mode == "autoregressive":
            hidden, _ = self._autoregressive(text_emb, cache, flat_idx, frame_mask, attention_mask, visual_pos, layout,
                                             bounds.max_prefix)
        else:
            vis = self.visual_tokens(None, frame_mask, mode, text_emb, attention_mask, visual_pos, cache=cache,
                                     max_prefix=bounds.max_prefix)
            hidden = self._run_packed(text_emb, vis, layout)
        return self._head(hidden, layout, input_ids, loss_mask.bool() & attention_mask.bool(), return_logits,
                          bounds.max_targets)

    def _head(self, hidden, layout: Layout, input_ids, targets, return_logits: bool, max_targets: int | None = None) -> dict:
        """The LM head on target positions only, K of them (static: the host bound, else read once / B*S compiled)."""
        B, S = input_ids.shape
        targets = targets & (layout.prev_pos >= 0)
        flat = targets.reshape(-1)
        if max_targets is None:
            max_targets = B * S if _compiling() else int(flat.sum())
        K = min(int(max_targets), B * S)
        idx = torch.nonzero_static(flat, size=K, fill_value=B * S)[:, 0]  # [K] flat (b, j); B*S = none
        real = idx < B * S
        safe = torch.where(real, idx, torch.zeros_like(idx))
        b_idx, j_idx = safe // S, safe % S
        h = hidden[b_idx, layout.prev_pos[b_idx, j_idx].clamp(min=0)]
        logits_t = self.llm.lm_head(h).float()  # lm_head only where a token is predicted
        tok_lp = -F.cross_entropy(logits_t, input_ids[b_idx, j_idx], reduction="none")
        tok_lp = torch.where(real, tok_lp, tok_lp.new_zeros(()))
        token_logps = tok_lp.new_zeros(B * S + 1).scatter(0, idx, tok_lp)[: B * S].view(B, S)
        n_targets = targets.sum(1)
        if K:
            loss = -tok_lp.sum() / real.sum().clamp(min=1)
        else:
            loss = hidden.sum() * 0.0
        out = {"loss": loss, "token_logps": token_logps, "logps": token_logps.sum(1), "n_targets": n_targets}
        if return_logits:
            h_text = hidden.gather(1, layout.text_pos.clamp(min=0)[..., None].expand(-1, -1, hidden.shape[-1]))
            out["logits"] = self.llm.lm_head(h_text).float()
        return out

    def num_parameters(self) -> int:
        seen = set()
        total = 0
        for p in self.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        return total
