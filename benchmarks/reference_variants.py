"""Reference variants of FoveatedVLM methods: what the library's choices save, measured by benchmarks/bench_train.py
(through benchmarks/profile_variant.py) and checked for equal losses by tests/test_profile.py. Measurement only:
they live here, not in the library.

    full_coarse_pass   the coarse LLM pass over [text[:p], visual, text[p:]] (the reference code's) instead of
                       [text[:p], visual]; causality makes the queries equal
    lm_head_all        lm_head over all B x L positions ([B, L, V] logits), then the targets picked
    dino_real_only     DINO over the real frames only (a compact cache: reads the frame count back, a host sync)
                       instead of every frame slot (the library's static shapes)
"""

from __future__ import annotations

from types import MethodType

import torch
import torch.nn.functional as F

from fvlm_cli.model.vlm import build_layout


def _fine_queries_full(self, text_emb, cache, frame_mask, attention_mask, visual_pos, max_prefix=None):
    B, T = frame_mask.shape
    coarse = self.read(self.q_static.expand(B * T, -1).reshape(B, T, self.query_dim), cache, frame_mask)
    layout = build_layout(attention_mask, frame_mask, visual_pos, text="all")
    h = self._run_packed(text_emb, coarse, layout)
    h_vis = h.gather(1, layout.vis_pos.clamp(min=0)[..., None].expand(-1, -1, h.shape[-1]))
    q = self.llm_to_query(h_vis)
    return torch.cat([self.q_init.expand(B, 1, -1).to(q.dtype), q[:, :-1]], dim=1)[:, :T]


def _head_all_positions(self, hidden, layout, input_ids, targets, return_logits, max_targets=None):
    B, S = input_ids.shape
    logits = self.llm.lm_head(hidden).float()
    targets = targets & (layout.prev_pos >= 0)
    b_idx, j_idx = targets.nonzero(as_tuple=True)
    tok_lp = -F.cross_entropy(logits[b_idx, layout.prev_pos[b_idx, j_idx]], input_ids[b_idx, j_idx], reduction="none")
    token_logps = torch.zeros(B, S, device=hidden.device, dtype=tok_lp.dtype).index_put((b_idx, j_idx), tok_lp)
    loss = -tok_lp.mean() if tok_lp.numel() else hidden.sum() * 0.0
    out = {"loss": loss, "token_logps": token_logps, "logps": token_logps.sum(1), "n_targets": targets.sum(1)}
    if return_logits:
        out["logits"] = logits.gather(1, layout.text_pos.clamp(min=0)[..., None].expand(-1, -1, logits.shape[-1]))
    return out


def _encode_real_frames_only(self, frames, frame_mask):
    return self.encode_frames(frames, frame_mask)


VARIANTS = {
    "full_coarse_pass": ("fine_queries", _fine_queries_full),
    "lm_head_all": ("_head", _head_all_positions),
    "dino_real_only": ("encode_slots", _encode_real_frames_only),
}


def apply(model, name: str):
    """Bind reference variant `name` onto this model instance (returns the model)."""
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    attr, fn = VARIANTS[name]
    setattr(model, attr, MethodType(fn, model))
    return model
