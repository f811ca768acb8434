"""BEFORE (issue 13): a frozen copy of fvlm_cli/model/vlm.py as it was on main, for benchmarks/bench_hotpath.py only.

FoveatedVLM: DINOv2 deep-query encoder + a causal LM, one visual token per frame.

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


def build_layout(attention_mask: torch.Tensor, frame_mask: torch.Tensor, visual_pos: torch.Tensor,
                 text: str = "all") -> Layout:
    """text='all': [text[:p], visual, text[p:]]; text='prefix': [text[:p], visual] (the coarse pass)."""
    B, S = attention_mask.shape
    T = frame_mask.shape[1]
    n_text = attention_mask.sum(1).tolist()
    p_all = visual_pos.clamp(min=0).tolist()
    fm = frame_mask.tolist()
    rows, text_pos, prev_pos, vis_pos = [], [], [], []
    for b in range(B):
        n, p = int(n_text[b]), min(int(p_all[b]), int(n_text[b]))
        frames = [t for t in range(T) if fm[b][t]]
        seq = [b * S + j for j in range(p)] + [B * S + b * T + t for t in frames]
        if text == "all":
            seq += [b * S + j for j in range(p, n)]
        tp, vp = [-1] * S, [-1] * T
        for j in range(p):
            tp[j] = j
        for i, t in enumerate(frames):
            vp[t] = p + i
        if text == "all":
            for j in range(p, n):
                tp[j] = p + len(frames) + (j - p)
        pp = [x - 1 if x > 0 else -1 for x in tp]
        rows.append(seq)
        text_pos.append(tp)
        prev_pos.append(pp)
        vis_pos.append(vp)
    L = max(1, max(len(r) for r in rows))
    dev = attention_mask.device
    index = torch.zeros(B, L, dtype=torch.long)
    valid = torch.zeros(B, L, dtype=torch.bool)
    for b, r in enumerate(rows):
        index[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        valid[b, : len(r)] = True
    as_t = lambda x: torch.tensor(x, dtype=torch.long, device=dev).reshape(B, -1)
    return Layout(index.to(dev), valid.to(dev), as_t(text_pos), as_t(prev_pos), as_t(vis_pos))


class LLMStream:
    """Incremental LLM state for a batch: a KV cache plus which cached positions are real.

    Every step may carry padding (`valid` False); padded positions are masked out of every later
    query and take no position id, so each sample sees exactly its own contiguous sequence.
    """

    def __init__(self, llm: nn.Module, batch_size: int, device: torch.device):
        self.llm = llm
        self.cache = None
        self.kv_valid = torch.zeros(batch_size, 0, dtype=torch.bool, device=device)
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)

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
                             past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
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

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(input_ids)

    def encode_frames(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> tuple[FrameCache | None, torch.Tensor]:
        """Run DINO once over the real frames only. Returns the cache and flat_idx [B, T] (-1 = padded)."""
        B, T = frame_mask.shape
        flat_idx = torch.full((B, T), -1, dtype=torch.long, device=frame_mask.device)
        n = int(frame_mask.sum())
        flat_idx[frame_mask] = torch.arange(n, device=frame_mask.device)
        if n == 0:
            return None, flat_idx
        return _main_encode(self.encoder, frames[frame_mask]), flat_idx

    def project(self, z: torch.Tensor) -> torch.Tensor:
        return self.visual_scale * self.dino_to_llm(z)

    def read(self, queries: torch.Tensor, cache: FrameCache | None, frame_mask: torch.Tensor) -> torch.Tensor:
        """queries: [B, T, Dq] (one per frame) -> visual tokens [B, T, D_llm] (zeros at padded frames)."""
        B, T = frame_mask.shape
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
        out = self.llm.model(inputs_embeds=emb, attention_mask=layout.valid.long(), position_ids=pos, use_cache=False)
        return out.last_hidden_state

    def fine_queries(self, text_emb, cache, frame_mask, attention_mask, visual_pos) -> torch.Tensor:
        """The coarse pass: q_static tokens -> LLM over [text[:p], visual] -> queries [B, T, Dq] for the fine read."""
        B, T = frame_mask.shape
        coarse = self.read(self.q_static.expand(B * T, -1).reshape(B, T, self.query_dim), cache, frame_mask)
        layout = build_layout(attention_mask, frame_mask, visual_pos, text="prefix")
        h = self._run_packed(text_emb, coarse, layout)
        h_vis = h.gather(1, layout.vis_pos.clamp(min=0)[..., None].expand(-1, -1, h.shape[-1]))  # [B, T, D]
        q = self.llm_to_query(h_vis)
        # frame t+1 is read with the query made at frame t; frame 1 with q_init
        return torch.cat([self.q_init.expand(B, 1, -1).to(q.dtype), q[:, :-1]], dim=1)[:, :T]

    def _autoregressive(self, text_emb, cache, flat_idx, frame_mask, attention_mask, visual_pos, layout):
        """Frame by frame on a KV cache. Returns (hidden in `layout` order [B, L, D], the open stream)."""
        B, S, D = text_emb.shape
        T = frame_mask.shape[1]
        dev = text_emb.device
        stream = LLMStream(self.llm, B, dev)
        hidden = torch.zeros(B, layout.index.shape[1], D, device=dev, dtype=text_emb.dtype)
        n_text = attention_mask.sum(1)
        p = torch.minimum(visual_pos.clamp(min=0), n_text)
        j = torch.arange(S, device=dev)[None]
        P = int(p.max()) if B else 0
        if P > 0:  # question-first: system + user turn before the frames
            ok = j[:, :P] < p[:, None]
            h = stream.step(text_emb[:, :P], ok)
            hidden = _scatter(hidden, h, torch.where(ok, layout.text_pos[:, :P], -1))
        query = self.q_init.expand(B, -1)
        for t in range(T):
            live = frame_mask[:, t]
            vis = torch.zeros(B, 1, D, device=dev, dtype=text_emb.dtype)
            if bool(live.any()):
                sub = cache.select(flat_idx[live, t])
                vis[live, 0] = self.project(self.encoder.query(query[live], sub)).to(vis.dtype)
            h = stream.step(vis, live[:, None])
            hidden = _scatter(hidden, h, layout.vis_pos[:, t : t + 1])
            query = torch.where(live[:, None], self.llm_to_query(h[:, 0]).to(query.dtype), query)
        # the text after the frames, right-padded per sample
        n_suf = n_text - p
        Q = int(n_suf.max()) if B else 0
        if Q > 0:
            src = (p[:, None] + torch.arange(Q, device=dev)[None]).clamp(max=S - 1)
            ok = torch.arange(Q, device=dev)[None] < n_suf[:, None]
            emb = text_emb.gather(1, src[..., None].expand(-1, -1, D))
            h = stream.step(emb, ok)
            pos = torch.where(ok, layout.text_pos.gather(1, src), torch.full_like(src, -1))
            hidden = _scatter(hidden, h, pos)
        return hidden, stream

    def visual_tokens(self, frames, frame_mask, mode, text_emb=None, attention_mask=None, visual_pos=None, cache=None):
        """The visual tokens a non-autoregressive mode feeds the LLM: [B, T, D_llm] (pass `cache` to reuse DINO)."""
        B, T = frame_mask.shape
        if cache is None:
            cache, _ = self.encode_frames(frames, frame_mask)
        if mode == "coarse_only":
            return self.read(self.q_static.expand(B * T, -1).reshape(B, T, self.query_dim), cache, frame_mask)
        return self.read(self.fine_queries(text_emb, cache, frame_mask, attention_mask, visual_pos), cache, frame_mask)

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
                visual_pos: torch.Tensor | None = None, mode: str = "coarse_fine", return_logits: bool = True) -> dict:
        """frames: [B, T, 3, H, W] (ImageNet-normalised), input_ids/attention_mask/loss_mask: [B, S],
        frame_mask: [B, T] bool, visual_pos: [B] (text index the frames are inserted before; 0 = video first).

        Returns {"loss": mean CE over targets (loss_mask == 1), "logits": [B, S, V] output at each text
        position (predicting token s+1), "token_logps": [B, S] log-prob of each target token (0 elsewhere),
        "logps": [B] their sum, "n_targets": [B]}. Text token j is predicted from the element before it,
        so the first text token after the frames is predicted from the last visual position.
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        B, T = frames.shape[:2]
        S = input_ids.shape[1]
        dev = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones(B, S, dtype=torch.long, device=dev)
        if loss_mask is None:
            loss_mask = attention_mask
        if frame_mask is None:
            frame_mask = torch.ones(B, T, dtype=torch.bool, device=dev)
        frame_mask = frame_mask.bool()
        if visual_pos is None:
            visual_pos = torch.zeros(B, dtype=torch.long, device=dev)
        text_emb = self.embed_text(input_ids)
        layout = build_layout(attention_mask, frame_mask, visual_pos)
        if mode == "autoregressive":
            cache, flat_idx = self.encode_frames(frames, frame_mask)
            hidden, _ = self._autoregressive(text_emb, cache, flat_idx, frame_mask, attention_mask, visual_pos, layout)
        else:
            vis = self.visual_tokens(frames, frame_mask, mode, text_emb, attention_mask, visual_pos)
            hidden = self._run_packed(text_emb, vis, layout)
        return self._head(hidden, layout, input_ids, loss_mask.bool() & attention_mask.bool(), return_logits)

    def _head(self, hidden, layout: Layout, input_ids, targets, return_logits: bool) -> dict:
        B, S = input_ids.shape
        targets = targets & (layout.prev_pos >= 0)
        b_idx, j_idx = targets.nonzero(as_tuple=True)
        h = hidden[b_idx, layout.prev_pos[b_idx, j_idx]]
        logits_t = self.llm.lm_head(h).float()  # lm_head only where a token is predicted
        tok_lp = -F.cross_entropy(logits_t, input_ids[b_idx, j_idx], reduction="none")
        token_logps = torch.zeros(B, S, device=hidden.device, dtype=tok_lp.dtype).index_put((b_idx, j_idx), tok_lp)
        n_targets = targets.sum(1)
        loss = -tok_lp.mean() if tok_lp.numel() else hidden.sum() * 0.0
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


def _scatter(hidden: torch.Tensor, h: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """hidden[b, pos[b, i]] = h[b, i] where pos >= 0 (out of place, keeps autograd simple)."""
    ok = pos >= 0
    if not bool(ok.any()):
        return hidden
    b_idx = torch.arange(pos.shape[0], device=pos.device)[:, None].expand_as(pos)[ok]
    return hidden.index_put((b_idx, pos[ok]), h[ok].to(hidden.dtype))


def _main_encode(enc, pixels: torch.Tensor) -> FrameCache:
    """main's FoveatedEncoder.encode: every layer in full, the final norm included."""
    from fvlm_cli.model.encoder import attention_parts

    h = enc.dino.embeddings(pixels)
    keys, values = [], []
    for layer in enc.dino.encoder.layer:
        q_lin, k_lin, v_lin, o_lin = attention_parts(layer)
        x = layer.norm1(h)
        k, v = enc._split(k_lin(x)), enc._split(v_lin(x))
        keys.append(k)
        values.append(v)
        a = F.scaled_dot_product_attention(enc._split(q_lin(x)), k, v)
        h = h + layer.layer_scale1(o_lin(a.transpose(1, 2).flatten(2)))
        h = h + layer.layer_scale2(layer.mlp(layer.norm2(h)))
    enc.dino.layernorm(h)  # main computed the patches' final output and kept it in the cache
    return FrameCache(keys, values)
