"""Device, dtype and seeding: one place that turns `--device auto --dtype auto` into torch objects."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from fvlm_cli.errors import FvlmError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            return torch.device("cuda", local)
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FvlmError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise FvlmError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The compute dtype: bf16 autocast on GPU, fp32 on CPU unless asked."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}
    if name not in table:
        raise FvlmError(f"--dtype {name!r}: use auto, bf16 or fp32")
    return table[name]


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast where asked; a no-op context for fp32."""
    enabled = dtype != torch.float32
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
