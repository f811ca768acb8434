"""DPO (sigmoid loss) on summed answer log-probs, TRL's metric names."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(pi_c: torch.Tensor, pi_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor, beta: float):
    """-log sigma(beta [(pi_c - ref_c) - (pi_r - ref_r)]) averaged over the batch; all inputs [B] summed log-probs."""
    chosen = beta * (pi_c - ref_c)
    rejected = beta * (pi_r - ref_r)
    loss = -F.logsigmoid(chosen - rejected).mean()
    metrics = {
        "rewards/chosen": chosen.detach().mean().item(),
        "rewards/rejected": rejected.detach().mean().item(),
        "rewards/accuracies": (chosen > rejected).float().mean().item(),
        "rewards/margins": (chosen - rejected).detach().mean().item(),
        "logps/chosen": pi_c.detach().mean().item(),
        "logps/rejected": pi_r.detach().mean().item(),
    }
    return loss, metrics


def pair_batch(batch: dict) -> dict:
    """A DPO batch -> one forward batch of 2B rows (chosen first, then rejected), frames shared by repetition."""
    out = {}
    for key in ("input_ids", "attention_mask", "loss_mask"):
        c, r = batch[f"chosen_{key}"], batch[f"rejected_{key}"]
        L = max(c.shape[1], r.shape[1])
        pad = 0
        c = F.pad(c, (0, L - c.shape[1]), value=pad)
        r = F.pad(r, (0, L - r.shape[1]), value=pad)
        out[key] = torch.cat([c, r])
    out["visual_pos"] = torch.cat([batch["chosen_visual_pos"], batch["rejected_visual_pos"]])
    out["frames"] = torch.cat([batch["frames"], batch["frames"]])
    out["frame_mask"] = torch.cat([batch["frame_mask"], batch["frame_mask"]])
    return out
