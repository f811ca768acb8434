"""Run K optimizer steps of the training step (DDP when launched by torchrun) on a fixed global batch.

Each rank takes its half of every micro-batch; gradient accumulation uses no_sync like fvlm_cli.train.loop.
Usage: python ddp_worker.py OUT.pt [K] [ACCUM]   (or under torchrun --nproc_per_node 2)
"""

import os
import sys
from contextlib import nullcontext

import torch
import torch.distributed as dist

from fvlm_cli.model.build import build_model, preset
from fvlm_cli.settings import OptimConfig
from fvlm_cli.train.loop import wrap_ddp
from fvlm_cli.train.optim import build_optimizer, build_scheduler


def global_batches(n_micro: int, B: int = 4, T: int = 3, S: int = 8):
    g = torch.Generator().manual_seed(123)
    out = []
    for i in range(n_micro):
        frames = torch.randn(B, T, 3, 64, 64, generator=g)
        ids = torch.randint(3, 2000, (B, S), generator=g)
        fm = torch.ones(B, T, dtype=torch.bool)
        if i % 2 == 1:
            fm[:] = False  # a text-only micro-batch: the vision path runs on masked slots (zero gradients)
        out.append(dict(frames=frames, input_ids=ids, frame_mask=fm))
    return out


def main():
    out_path, K, accum = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2, int(sys.argv[3]) if len(sys.argv) > 3 else 2
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    if world > 1:
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = build_model(preset("tiny")).train()
    opt = build_optimizer(model, OptimConfig(), torch.device("cpu"))
    sched = build_scheduler(opt, K, OptimConfig(warmup=0.0))
    net = wrap_ddp(model, "coarse_fine", torch.device("cpu")) if world > 1 else model  # as the loop wraps it
    batches = global_batches(K * accum)
    for step in range(K):
        for micro in range(accum):
            b = batches[step * accum + micro]
            half = b["frames"].shape[0] // world
            part = {k: v[rank * half:(rank + 1) * half] for k, v in b.items()}
            ctx = net.no_sync() if (world > 1 and micro < accum - 1) else nullcontext()
            with ctx:
                loss = net(**part, mode="coarse_fine", return_logits=False)["loss"]
                (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out_path)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
