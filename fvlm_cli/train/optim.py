"""Parameter groups and LR schedules (SPEC §4).

Groups: connector (all projections incl. output_proj, both queries), DINO, LLM; each with its own LR
and freeze switch. No weight decay on norms, biases and the queries. AdamW is fused wherever torch has the
kernel (CUDA and, since torch 2.4, CPU): one kernel per step and a device-side skip of non-finite steps.
"""

from __future__ import annotations

import math

import torch

from fvlm_cli.settings import OptimConfig


def group_of(name: str) -> str:
    if name.startswith("encoder.dino."):
        return "dino"
    if name.startswith("llm."):
        return "llm"
    return "connector"  # query_input_proj, output_proj, dino_to_llm, llm_to_query, q_static, q_init


def _no_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim < 2 or name.endswith(".bias") or "norm" in name or name in ("q_static", "q_init")


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        g = group_of(name)
        frozen = getattr(cfg, g).frozen
        p.requires_grad_(not frozen)
        if frozen:
            continue
        groups.setdefault((g, _no_decay(name, p)), []).append(p)
    params = []
    for (g, nd), ps in sorted(groups.items()):
        gc = getattr(cfg, g)
        params.append({"params": ps, "lr": gc.lr, "weight_decay": 0.0 if nd else gc.weight_decay, "group": g,
                       "lr_start": gc.lr, "lr_end": gc.lr_end})
    if not params:
        from fvlm_cli.errors import ConfigError

        raise ConfigError("every parameter group is frozen (optim.*.frozen): nothing to train")
    fused = cfg.fused and device.type in _fused_devices()
    return torch.optim.AdamW(params, lr=params[0]["lr"], betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)


def _fused_devices() -> list[str]:
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return _get_fused_kernels_supported_devices()


def masked_step(opt: torch.optim.Optimizer, ok: torch.Tensor) -> None:
    """opt.step() where the device flag `ok` is true, a no-op (parameters, moments and step count unchanged) where
    false, without reading `ok` back: the fused AdamW kernel takes it as `found_inf`, as GradScaler uses it. An
    unfused optimizer has no such input, so it reads the flag (one host sync per step)."""
    if opt.defaults.get("fused"):
        opt.found_inf = (~ok).float()
        try:
            opt.step()
        finally:
            del opt.found_inf
    elif bool(ok):
        opt.step()


def lr_at(step: int, total: int, start: float, end: float | None, cfg: OptimConfig) -> float:
    """LR of one group at `step` (0-based) of `total`.

    cosine:     linear warmup to `start`, cosine to start * min_lr_ratio
    converging: linear warmup to `start`, cosine from `start` to the group's `end` (groups converge to a common LR)
    constant:   linear warmup, then flat
    """
    warm = max(1, int(round(cfg.warmup * total))) if cfg.warmup > 0 else 0
    if step < warm:
        return start * (step + 1) / warm
    if cfg.schedule == "constant":
        return start
    progress = min(1.0, (step - warm) / max(1, total - warm))
    cos = 0.5 * (1 + math.cos(math.pi * progress))
    floor = start * cfg.min_lr_ratio if (cfg.schedule == "cosine" or end is None) else end
    return floor + (start - floor) * cos


def build_scheduler(opt: torch.optim.Optimizer, total: int, cfg: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    fns = []
    for g in opt.param_groups:
        start, end = g["lr_start"], g["lr_end"]
        fns.append(lambda s, start=start, end=end: lr_at(s, total, start, end, cfg) / start)
    return torch.optim.lr_scheduler.LambdaLR(opt, fns)


def lrs(opt: torch.optim.Optimizer) -> dict[str, float]:
    return {f"lr/{g['group']}": g["lr"] for g in opt.param_groups}
