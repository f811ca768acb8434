"""DPO (sigmoid loss) on summed answer log-probs, TRL's metric names."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(pi_c: torch.Tensor, pi_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor, beta: float):
    """-log sigma(beta [(pi_c - ref_c) - (pi_r - ref_r)]) averaged over the batch; all inputs [B] summed log-probs."""
    chosen = beta * (pi_c - ref_c)
    rejected = beta * (pi_r - ref_r)
    loss = -F.logsigmoid(chosen - rejected).mean()
    metrics = {  # device tensors: the loop reads them at log steps only
        "rewards/chosen": chosen.detach().mean(),
        "rewards/rejected": rejected.detach().mean(),
        "rewards/accuracies": (chosen > rejected).float().mean(),
        "rewards/margins": (chosen - rejected).detach().mean(),
        "logps/chosen": pi_c.detach().mean(),
        "logps/rejected": pi_r.detach().mean(),
    }
    return loss, metrics


def pair_batch(batch: dict) -> dict:
    """A DPO batch -> one forward batch of 2B text rows (chosen first, then rejected) over the B videos: pass
    `repeat_frames=2` to the model, which runs DINO's patch pass once per video for both rows."""
    out = {}
    for key in ("input_ids", "attention_mask", "loss_mask"):
        c, r = batch[f"chosen_{key}"], batch[f"rejected_{key}"]
        L = max(c.shape[1], r.shape[1])
        pad = 0
        c = F.pad(c, (0, L - c.shape[1]), value=pad)
        r = F.pad(r, (0, L - r.shape[1]), value=pad)
        out[key] = torch.cat([c, r])
    out["visual_pos"] = torch.cat([batch["chosen_visual_pos"], batch["rejected_visual_pos"]])
    out["frames"] = batch["frames"]
    out["frame_mask"] = batch["frame_mask"]
    return out
