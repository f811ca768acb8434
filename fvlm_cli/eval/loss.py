"""Loss and attention evaluation on a fixed set of batches (training validation, `bench val-loss`)."""

from __future__ import annotations

import torch


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


MODEL_KEYS = ("frames", "input_ids", "attention_mask", "loss_mask", "frame_mask", "visual_pos")


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in MODEL_KEYS if k in batch}


@torch.no_grad()
def evaluate_loss(model, batches, modes, device, autocast_ctx=None) -> dict:
    """Token-weighted mean NLL per mode over `batches`: {"loss_<mode>": float, "tokens": int}."""
    from contextlib import nullcontext

    was_training = model.training
    model.eval()
    out = {}
    tokens = 0
    for mode in modes:
        nll, n = 0.0, 0
        for batch in batches:
            b = to_device(batch, device)
            with autocast_ctx() if autocast_ctx else nullcontext():
                r = model(**model_inputs(b), mode=mode, return_logits=False)
            nll += -float(r["logps"].sum())
            n += int(r["n_targets"].sum())
        out[f"loss_{mode}"] = nll / max(n, 1)
        tokens = n
    out["tokens"] = tokens
    if "loss_coarse_fine" in out and "loss_coarse_only" in out and out["loss_coarse_only"] > 0:
        out["fine_coarse_ratio"] = out["loss_coarse_fine"] / out["loss_coarse_only"]
    model.train(was_training)
    return out


@torch.no_grad()
def query_attention(model, frames, frame_mask, input_ids=None, attention_mask=None, visual_pos=None):
    """Per-frame attention of the coarse (q_static) and fine queries over the real frames: {"coarse"|"fine":
    [L, N, H, 1+P]}, and the visual tokens the LLM receives from them: {"tokens_coarse"|"tokens_fine": [N, D_llm]}."""
    B, T = frame_mask.shape
    cache, _ = model.encode_frames(frames, frame_mask)
    if cache is None:
        return {}
    if input_ids is None:
        input_ids = torch.zeros(B, 0, dtype=torch.long, device=frames.device)
        attention_mask = torch.zeros(B, 0, dtype=torch.long, device=frames.device)
    if visual_pos is None:
        visual_pos = torch.zeros(B, dtype=torch.long, device=frames.device)
    coarse_q = model.q_static.expand(int(frame_mask.sum()), -1)
    z_coarse, a_coarse = model.encoder.query(coarse_q, cache, return_attention=True)
    fine = model.fine_queries(model.embed_text(input_ids), cache, frame_mask, attention_mask, visual_pos)
    z_fine, a_fine = model.encoder.query(fine[frame_mask], cache, return_attention=True)
    return {"coarse": a_coarse, "fine": a_fine, "tokens_coarse": model.project(z_coarse),
            "tokens_fine": model.project(z_fine)}


def shared_fraction(tokens: torch.Tensor) -> float:
    """Norm of the mean of visual tokens [N, D] over their mean norm: ~0 when frames give unrelated tokens, 1 when every
    frame gives the same token. Near 1 the LLM sees one shared prefix and hardly what differs between frames; a
    random-init LLM's stage 1 (loss on every text token) drives the tiny preset there (docs/LOG.md, issue 13)."""
    t = tokens.float()
    return float(t.mean(0).norm() / t.norm(dim=-1).mean().clamp_min(1e-12))


def entropy(attn: torch.Tensor) -> float:
    """Mean entropy (nats) of attention distributions over keys, averaged over layers, frames and heads."""
    p = attn.float().clamp_min(1e-12)
    return float(-(p * p.log()).sum(-1).mean())
