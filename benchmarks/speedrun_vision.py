"""Why the speedrun's shape and direction answers stay near chance (docs/LOG.md, issue 13): what the tiny vision path
can learn from the synthetic videos, and what a trained model's visual tokens carry.

    OMP_NUM_THREADS=1 python benchmarks/speedrun_vision.py learn [--steps 600] [--videos 1000]
        Supervised learnability on raw synthetic frames (no LLM, no codec): the tiny preset's DINO + one learned
        query token + linear heads (shape from frame 1; direction from the tokens of the first and last sampled
        frame), next to a 2-layer CNN on the same frames and labels. -> results/speedrun_vision_learn.json
    OMP_NUM_THREADS=1 python benchmarks/speedrun_vision.py probe RUN_DIR [RUN_DIR ...]
        Linear probes (held-out bench videos) on the visual tokens a trained model feeds its LLM, per mode, and on
        all of DINO's patch features. RUN_DIR: a speedrun's stage2 or dpo folder. -> results/speedrun_vision_probe.json

    OMP_NUM_THREADS=1 python benchmarks/speedrun_vision.py oracle OUT [--steps-scale S] [--set KEY=VALUE ...]
        The whole speedrun with a perfect vision path: every frame token is a fixed random map of the object's true
        centroid (x, y), its area and its mean colour, computed from the pixels (DINO and the query are bypassed,
        monkeypatched here, not in the library). What the LLM and the recipe can learn from ideal tokens.

Every figure is test accuracy on held-out videos (the bench split), chance 1/3 for shape and 1/4 for direction.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fvlm_cli.data import synthetic  # noqa: E402
from fvlm_cli.data.media import frames_to_tensor  # noqa: E402
from fvlm_cli.data.sources.synthetic import SPLITS  # noqa: E402

FIRST_LAST = [0, 28]  # the first and last frame the speedrun samples (8 s at 4 fps, read at 1 fps)


def videos(split: str, n: int, size: int) -> list:
    return [synthetic.make_video(SPLITS[split] + k, size=size) for k in range(n)]


def labels(vs: list, attr: str) -> torch.Tensor:
    pool = {"shape": synthetic.SHAPES, "direction": synthetic.DIRECTIONS, "color": synthetic.COLORS,
            "count": synthetic.COUNTS}[attr]
    return torch.tensor([pool.index(getattr(v, attr)) for v in vs])


def linear_probe(x_tr: torch.Tensor, y_tr: torch.Tensor, x_te: torch.Tensor, y_te: torch.Tensor) -> float:
    """Standardised features, L2-regularised multinomial logistic regression (LBFGS) -> held-out accuracy."""
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
    w = torch.zeros(x_tr.shape[1], int(y_tr.max()) + 1, requires_grad=True)
    b = torch.zeros(w.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x_tr @ w + b, y_tr) + 1e-2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((x_te @ w + b).argmax(1) == y_te).float().mean())


# ---------------------------------------------------------------------------------------------------- learn


def _fit(forward, params, data, steps: int, lr: float) -> None:
    x, ys = data
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        i = torch.randint(0, len(x), (32,), generator=g)
        outs = forward(x[i])
        loss = sum(F.cross_entropy(o, y[i]) for o, y in zip(outs, ys))
        opt.zero_grad()
        loss.backward()
        opt.step()


def learn_vit(overrides: list[str], steps: int, n_videos: int, lr: float) -> dict:
    from fvlm_cli.model.build import build_model, preset

    torch.manual_seed(0)
    model = build_model(preset("tiny", overrides), pretrained=False)
    enc, size = model.encoder, model.image_size
    tr, te = videos("train", n_videos, size), videos("bench", 300, size)
    x_tr = torch.stack([frames_to_tensor(v.frames[FIRST_LAST]) for v in tr])
    x_te = torch.stack([frames_to_tensor(v.frames[FIRST_LAST]) for v in te])
    query = nn.Parameter(torch.randn(1, model.query_dim))
    shape_head, dir_head = nn.Linear(enc.dim, 3), nn.Linear(2 * enc.dim, 4)

    def forward(x):
        z = enc.query(query.expand(2 * len(x), -1), enc.encode(x.flatten(0, 1))).view(len(x), 2, -1)
        return shape_head(z[:, 0]), dir_head(z.flatten(1))

    params = list(enc.parameters()) + [query] + list(shape_head.parameters()) + list(dir_head.parameters())
    t0 = time.perf_counter()
    _fit(forward, params, (x_tr, (labels(tr, "shape"), labels(tr, "direction"))), steps, lr)
    with torch.no_grad():
        s_tr = float((forward(x_tr[:300])[0].argmax(1) == labels(tr[:300], "shape")).float().mean())
        s, d = forward(x_te)
    return {"model": "tiny DINO + query", "overrides": overrides, "steps": steps, "videos": n_videos, "lr": lr,
            "shape_train": s_tr, "shape": float((s.argmax(1) == labels(te, "shape")).float().mean()),
            "direction": float((d.argmax(1) == labels(te, "direction")).float().mean()),
            "seconds": time.perf_counter() - t0}


def learn_cnn(steps: int, n_videos: int) -> dict:
    torch.manual_seed(0)
    tr, te = videos("train", n_videos, 64), videos("bench", 300, 64)
    x_tr = torch.stack([frames_to_tensor(v.frames[[0]])[0] for v in tr])
    x_te = torch.stack([frames_to_tensor(v.frames[[0]])[0] for v in te])
    net = nn.Sequential(nn.Conv2d(3, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 5, padding=2),
                        nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(64, 3))
    t0 = time.perf_counter()
    _fit(lambda x: (net(x),), list(net.parameters()), (x_tr, (labels(tr, "shape"),)), steps, 1e-3)
    with torch.no_grad():
        acc = float((net(x_te).argmax(1) == labels(te, "shape")).float().mean())
    return {"model": "2-layer CNN", "steps": steps, "videos": n_videos, "shape": acc,
            "seconds": time.perf_counter() - t0}


def cmd_learn(args) -> dict:
    rows = [learn_cnn(args.steps, args.videos)]
    for ov in ([], ["dino_config.patch_size=8"], ["dino_config.initializer_range=0.02", "dino_config.position_init_scale=1"]):
        rows.append(learn_vit(ov, args.steps, args.videos, 1e-3))
    rows.append(learn_vit([], args.steps * 3, args.videos * 4, 1e-3))
    for r in rows:
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
    return {"what": "supervised learnability of shape/direction on raw synthetic frames (held-out accuracy)",
            "rows": rows}


# ---------------------------------------------------------------------------------------------------- probe


def cmd_probe(args) -> dict:
    from fvlm_cli.infer.core import encode_prompts
    from fvlm_cli.model.build import load_model

    rows = []
    for run in args.runs:
        lm = load_model(run, device="cpu")
        m = lm.model.eval()
        tr, te = videos("train", args.videos, m.image_size), videos("bench", 300, m.image_size)

        def tokens(vs, mode):
            out = []
            for i in range(0, len(vs), 50):
                chunk = vs[i:i + 50]
                frames = torch.stack([frames_to_tensor(v.frames[::4]) for v in chunk])
                mask = torch.ones(frames.shape[:2], dtype=torch.bool)
                ids, am, vp = encode_prompts(lm, [synthetic.CAPTION_PROMPT] * len(chunk))
                with torch.no_grad():
                    out.append(m.visual_tokens(frames, mask, mode, m.embed_text(ids), am, vp).flatten(1))
            return torch.cat(out)

        def patches(vs):
            with torch.no_grad():
                return torch.cat([m.encoder.encode(torch.stack([frames_to_tensor(v.frames[FIRST_LAST]) for v in
                                                                vs[i:i + 100]]).flatten(0, 1)).features
                                  .unflatten(0, (-1, 2)).flatten(1) for i in range(0, len(vs), 100)])

        row = {"run": "/".join(Path(run).parts[-2:])}  # run folder and stage, no machine path
        feats = {mode: (tokens(tr, mode), tokens(te, mode)) for mode in ("coarse_only", "coarse_fine")}
        feats["dino_patches_first_last"] = (patches(tr), patches(te))
        for name, (a, b) in feats.items():
            row[name] = {attr: linear_probe(a, labels(tr, attr), b, labels(te, attr))
                         for attr in ("color", "count", "shape", "direction")}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return {"what": "linear probes (held-out bench videos) on a trained model's visual tokens and DINO patch features",
            "train_videos": args.videos, "rows": rows}


# ---------------------------------------------------------------------------------------------------- oracle

ORACLE_DIM = 6


def oracle_features(pixels: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] normalised frames -> [N, 6]: object centroid x, y in [-1, 1], area (x10 of the frame fraction) and
    mean object colour. The background is the median of the top and bottom rows (flat grey in the synthetic videos)."""
    n, _, h, w = pixels.shape
    border = torch.cat([pixels[:, :, 0, :], pixels[:, :, -1, :]], dim=-1)
    mask = ((pixels - border.median(dim=-1).values[:, :, None, None]).abs().sum(1) > 0.5).to(pixels.dtype)
    area = mask.sum((1, 2)).clamp(min=1)
    ys = torch.linspace(-1, 1, h, dtype=pixels.dtype)[None, :, None]
    xs = torch.linspace(-1, 1, w, dtype=pixels.dtype)[None, None, :]
    cx, cy = (mask * xs).sum((1, 2)) / area, (mask * ys).sum((1, 2)) / area
    colour = (pixels * mask[:, None]).sum((2, 3)) / area[:, None]
    return torch.cat([cx[:, None], cy[:, None], (area / (h * w))[:, None] * 10, colour], dim=1).detach()


@functools.lru_cache(maxsize=None)
def oracle_map(dim: int) -> torch.Tensor:
    """The fixed random [6, dim] map from oracle features to DINO width (drawn once, seed 0)."""
    return torch.randn(ORACLE_DIM, dim, generator=torch.Generator().manual_seed(0)) * 3.0


def patch_oracle() -> None:
    """Make every FoveatedEncoder read the oracle: `encode` appends the features as an extra cache entry (so every
    FrameCache transform carries them: select, per_slot, repeat), `query` returns output_proj(fixed map of them)."""
    from fvlm_cli.model import encoder as enc_mod

    cls = enc_mod.FoveatedEncoder
    encode, query = cls.encode, cls.query

    def oracle_encode(self, pixels):
        cache = encode(self, pixels)
        cache.keys.append(oracle_features(pixels)[:, None, None, :])
        return cache

    def oracle_query(self, q, cache, return_attention=False):
        if len(cache.keys) <= len(self.dino.encoder.layer):
            return query(self, q, cache, return_attention)
        w = oracle_map(self.dim)
        o = cache.keys[-1][:, 0, 0, :]
        z = self.output_proj(o @ w.to(o.dtype) + 0 * self.query_input_proj(q))  # q stays in the graph (DDP, compile)
        if not return_attention:
            return z
        k = cache.keys[0]
        return z, torch.full((len(self.dino.encoder.layer), k.shape[0], k.shape[1], k.shape[2]), 1.0 / k.shape[2])

    cls.encode, cls.query = oracle_encode, oracle_query


def cmd_oracle(args) -> dict:
    from fvlm_cli.speedrun import run_speedrun

    patch_oracle()
    info = run_speedrun(args.out, steps_scale=args.steps_scale, overrides=args.set)
    return {"what": "the speedrun with oracle frame tokens (object centroid, area, colour)", "steps_scale":
            args.steps_scale, "overrides": args.set, "bench": info["bench"]["results"], "seconds": info["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("learn")
    a.add_argument("--steps", type=int, default=600)
    a.add_argument("--videos", type=int, default=1000)
    p = sub.add_parser("probe")
    p.add_argument("runs", nargs="+")
    p.add_argument("--videos", type=int, default=1200)
    o = sub.add_parser("oracle")
    o.add_argument("run_out")
    o.add_argument("--steps-scale", type=float, default=1.0)
    o.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.cmd == "oracle":
        args.out, out_json = args.run_out, args.out
        res = cmd_oracle(args)
        args.out = out_json
    else:
        res = cmd_learn(args) if args.cmd == "learn" else cmd_probe(args)
    res.update(torch=torch.__version__, threads=torch.get_num_threads())
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"speedrun_vision_{args.cmd}.json")
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
