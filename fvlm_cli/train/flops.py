"""Model FLOPs per sample from the configs (vision included), for MFU.

Counted per forward (a multiply-add = 2 FLOPs); training = 3 x forward (backward ~ 2 x forward):
- DINO patch pass, per frame: 2 * P_layer * N + 4 * L * N^2 * D   (N = 1 + patches, P_layer = layer weights)
- a query walk, per frame: 2 * P_layer + 4 * L * N * D (one token attending to N keys); coarse_fine walks twice
- LLM, per token: 2 * P_llm_nonembed + 4 * L * ctx * D_llm / 2 (causal average); plus 2 * D * V per predicted token
  coarse_fine adds the visual-only coarse pass over T tokens.
"""

from __future__ import annotations

PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "L4": 121e12, "L40S": 362e12,
             "RTX 4090": 165e12, "V100": 125e12}


def peak_flops(device) -> float | None:
    import torch

    if getattr(device, "type", "cpu") != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for k, v in PEAK_BF16.items():
        if k in name:
            return v
    return None


def sample_flops(model, frames: int, text_tokens: int, mode: str = "coarse_fine", train: bool = True) -> float:
    """Per sample. Training counts backward through DINO's patch pass only when DINO trains: with it frozen (the
    tiny stage 1) nothing upstream of its K/V needs a gradient, so the pass runs forward only."""
    dino = model.encoder.dino.config
    D, L = dino.hidden_size, dino.num_hidden_layers
    grid = model.image_size // dino.patch_size
    N = 1 + grid * grid
    p_layer = sum(p.numel() for p in model.encoder.dino.encoder.layer[0].parameters())
    vision = frames * L * (2 * p_layer * N + 4 * N * N * D)
    walks = 2 if mode == "coarse_fine" else 1
    query = walks * frames * L * (2 * p_layer + 4 * N * D)
    llm = model.llm.config
    Dl, Ll, V = llm.hidden_size, llm.num_hidden_layers, llm.vocab_size
    p_llm = sum(p.numel() for n, p in model.llm.model.named_parameters() if "embed_tokens" not in n)
    ctx = frames + text_tokens
    tokens = ctx + (frames if mode == "coarse_fine" else 0)
    lm = tokens * 2 * p_llm + 2 * Ll * ctx * ctx * Dl + 2 * Dl * V * text_tokens
    if not train:
        return vision + query + lm
    dino_trains = any(p.requires_grad for p in model.encoder.dino.parameters())
    return (3 if dino_trains else 1) * vision + 3 * (query + lm)
