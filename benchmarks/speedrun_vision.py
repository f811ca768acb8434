"""Why the speedrun's shape and direction answers stay near chance (docs/LOG.md, issue 13): what the tiny vision path
can learn from the synthetic videos, and what a trained model's visual tokens carry.

    OMP_NUM_THREADS=1 python benchmarks/speedrun_vision.py learn [--steps 600] [--videos 1000]
        Supervised learnability on raw synthetic frames (no LLM, no codec): the tiny preset's DINO + one learned
        query token + linear heads (shape from frame 1; direction from the tokens of the first and last sampled
        frame), next to a 2-layer CNN on the same frames and labels. -> results/speedrun_vision_learn.json
    OMP_NUM_THREADS=1 python benchmarks/speedrun_vision.py probe RUN_DIR [RUN_DIR ...]
        Linear probes (held-out bench videos) on the visual tokens a trained model feeds its LLM, per mode, and on
        all of DINO's patch features. RUN_DIR: a speedrun's stage2 or dpo folder. -> results/speedrun_vision_probe.json

    OMP_NUM_THREADS=1 python benchmarks/speedrun_vision.py oracle OUT [--steps-scale S] [--stage1-steps N] [--tokens dino] [--set K=V ...]
        The whole speedrun with a perfect vision path: every frame token is a fixed random map of the object's true
        centroid (x, y), its area and its mean colour, computed from the pixels (DINO and the query are bypassed,
        monkeypatched here, not in the library). What the LLM and the recipe can learn from ideal tokens.
        `--tokens dino` runs the same speedrun with the real vision path (the control for --stage1-steps).
    OMP_NUM_THREADS=1 python benchmarks/speedrun_vision.py recipe [--oracle] [--stage1 300] [--s1-connector-lr 3e-3]
            [--s1-targets all|answer] [--steps 1200] [--seeds 0 1]
        The tiny recipe's stage 1 and stage 2 in memory (frames as the speedrun samples them, no codec, no text mix),
        then the synthetic multiple choice in coarse_fine: which recipe choice lets the LLM learn what the tokens carry.
        Each call adds its rows to the results file.
        [--s1-dino-lr 3e-4] [--s2-dino-lr 3e-4] [--s2-llm-lr 1e-3] [--direction-first N] [--videos 400] [--order video_first|question_first]
        [--train-mode coarse_fine|coarse_only] [--eval-mode ...] [--set KEY=VALUE ...] (tiny preset overrides):
        stage 1 with `--s1-connector-lr 0 --s1-dino-lr 0` holds the vision path fixed (the shipped tiny stage 1).
        --task smooth [--frame PX --shape-scale K --lanes A,B,C]: the same on the earlier synthetic task (shapes
        sliding at any sub-patch offset; frames of PX pixels, shapes K times larger, lanes across the motion at these
        fractions of the frame) and a tiny DINO of that image size.

Every figure is test accuracy on held-out videos (the bench split), chance 1/3 for shape and 1/4 for direction.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
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

FIRST_LAST = [0, 28]  # first and last of SAMPLED (the product reads frames 4k + 2, at mid-second: the same cells)


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


# ---------------------------------------------------------------------------------------------------- recipe

SAMPLED = list(range(0, 32, 4))  # 1 fps of 8 s at 4 fps (the product reads 4k + 2, at mid-second: the same cells)


def _encoded_batch(items: list, frames: list, pad_id: int) -> dict:
    """[(video index, Encoded)] -> model inputs: the training loader's text padding, the videos' frames stacked."""
    from fvlm_cli.data.loader import _pad_text

    return {"frames": torch.stack([frames[v] for v, _ in items]), **_pad_text([e for _, e in items], pad_id, "")}


@torch.no_grad()
def token_stats(model, vs: list) -> dict:
    """What the visual tokens the LLM receives (static query) look like on videos `vs`: their mean norm, the norm of
    their mean (a part every token shares), and the part that varies with the object's position (least-squares fit
    of the tokens on the oracle features; the std of the x, y term), against the text embeddings' norm."""
    was = model.training
    model.eval()
    px = torch.stack([frames_to_tensor(v.frames[SAMPLED]) for v in vs]).flatten(0, 1)
    tokens = model.project(model.encoder.query(model.q_static.expand(len(px), -1), model.encoder.encode(px)))
    feats = oracle_features(px)
    fit = torch.linalg.lstsq(torch.cat([feats, torch.ones(len(feats), 1)], 1), tokens).solution
    norm = float(tokens.norm(dim=-1).mean())
    position = float((feats[:, :2] @ fit[:2]).std(0).norm())
    model.train(was)
    return {"token_norm": norm, "shared_part_norm": float(tokens.mean(0).norm()), "position_part_std": position,
            "position_share": position / norm, "text_embedding_norm":
            float(model.embed_text(torch.arange(3, model.llm.config.vocab_size)).norm(dim=-1).mean())}


def use_task_variant(frame: int, shape_scale: float, lanes: tuple[float, ...] = (0.2, 0.5, 0.8)) -> None:
    """Replace `synthetic.make_video` (here, not in the library) by the speedrun's earlier task (shipped until the
    session of 2026-11-30): shapes sliding smoothly at any sub-patch offset, in lanes at `lanes` of the frame,
    with frames of `frame` px and shapes `shape_scale` times larger (r = 7.5-9.5% of the frame at scale 1). One change
    from that task: lanes jitter by +-2% of the frame, not +-4%, so that larger shapes stay apart."""
    import numpy as np

    S = synthetic

    def make_video(index: int, seed: int = 0, *, seconds: int = 8, fps: int = 4, size: int = 64):
        size = frame
        rng = np.random.default_rng([seed, index])
        color, shape = S.COLORS[rng.integers(len(S.COLORS))], S.SHAPES[rng.integers(len(S.SHAPES))]
        direction, count = S.DIRECTIONS[rng.integers(len(S.DIRECTIONS))], int(S.COUNTS[rng.integers(len(S.COUNTS))])
        background = np.full(3, rng.integers(25, 95), dtype=np.uint8)
        n = seconds * fps
        r = size * rng.uniform(0.075, 0.095) * shape_scale
        travel = size * rng.uniform(0.3, 0.45)
        margin = 1.3 * r + 1
        sx, sy = S._STEP[direction]
        objects = []
        for lane in rng.permutation(3)[:count]:
            across = size * lanes[lane] + rng.uniform(-0.02, 0.02) * size
            along0 = rng.uniform(margin, size - margin - travel)
            objects.append((across, size - along0 if (sx, sy) in ((-1, 0), (0, -1)) else along0))
        frames = np.empty((n, size, size, 3), np.uint8)
        rgb = np.array(S.COLOR_RGB[color], np.uint8)
        for i in range(n):
            frames[i] = background
            for across, along0 in objects:
                along = along0 + travel * (i / (n - 1) if n > 1 else 0.0) * (sx + sy)
                cx, cy = (along, across) if sx else (across, along)
                frames[i][S._shape_mask(shape, cx, cy, r, size)] = rgb
        return S.SyntheticVideo(id=f"var{seed}-{index:06d}", frames=frames, fps=float(fps), color=color, shape=shape,
                                direction=direction, count=count, index=index, seed=seed)

    synthetic.make_video = make_video


def recipe_run(oracle: bool, stage1: int, s1_connector_lr: float, s1_targets: str, steps: int, seed: int,
               n_videos: int = 400, batch: int = 16, eval_videos: int = 200, frame: int = 64,
               s1_dino_lr: float = 3e-4, s2_dino_lr: float = 3e-4, order: str = "video_first",
               model_overrides: tuple[str, ...] = (), train_mode: str = "coarse_fine",
               eval_mode: str = "coarse_fine", s2_llm_lr: float = 1e-3, direction_first: int = 0) -> dict:
    """Stage 1 (captions) then stage 2 (sft + mcq + captions, answer-only loss) of the tiny preset in memory, on the
    8 frames per video the speedrun samples (1 fps of 8 s at 4 fps), no codec and no text mix; then the synthetic
    multiple choice on held-out videos, scored by log-likelihood of the option letter as `bench` scores it.
    s1_targets: "all" (SPEC §3.4: every text token of stage 1 is a target) or "answer" (the caption only).
    A learning rate of 0 freezes that group: `s1_connector_lr=0, s1_dino_lr=0` is the shipped tiny stage 1."""
    from fvlm_cli.data.chat import Encoded, encode_chat, encode_mcq_options, special_ids
    from fvlm_cli.model.build import build_model, preset
    from fvlm_cli.settings import ChatConfig
    from fvlm_cli.model.tokenizer import load_tokenizer
    from fvlm_cli.train.optim import group_of

    torch.manual_seed(seed)
    tok = load_tokenizer("tiny")
    system, pad_id = ChatConfig().system_prompt, special_ids(tok)[1]  # the speedrun's system prompt; pad = <|im_end|>
    model = build_model(preset("tiny", [f"image_size={frame}", f"dino_config.image_size={frame}", *model_overrides]),
                        pretrained=False).train()
    train_v, bench_v = videos("train", n_videos, frame), videos("bench", eval_videos, frame)
    frames = [frames_to_tensor(v.frames[SAMPLED]) for v in train_v]
    bench_frames = [frames_to_tensor(v.frames[SAMPLED]) for v in bench_v]
    s1, s2, s2_dir = [], [], []
    for i, v in enumerate(train_v):
        for r in synthetic.samples_for(v, "unused.mp4"):
            if r["kind"] == "caption":
                s1.append((i, encode_chat(r["messages"], tok, stage=1 if s1_targets == "all" else 2,
                                          system_prompt=system, order=order)))
            if r["kind"] in ("sft", "mcq", "caption"):
                s2.append((i, encode_chat(r["messages"], tok, stage=2, system_prompt=system, order=order)))
            if r.get("category") == "direction":  # the warm-up pool of `direction_first`: the question and the word
                s2_dir.append((i, encode_chat(r["messages"], tok, stage=2, system_prompt=system, order=order)))
                question, answer = synthetic._SFT_QA["direction"]
                s2_dir.append((i, encode_chat([{"role": "user", "content": question},
                                               {"role": "assistant", "content": answer(v)}], tok, stage=2,
                                              system_prompt=system, order=order)))
    groups: dict[str, list] = {"connector": [], "dino": [], "llm": []}
    for name, p in model.named_parameters():
        groups[group_of(name)].append(p)
    rng = random.Random(seed)

    @torch.no_grad()
    def evaluate() -> dict:
        model.eval()
        acc = {}
        for cat in synthetic.CATEGORIES:
            right = 0
            for v, fr in zip(bench_v, bench_frames):
                r = next(x for x in synthetic.samples_for(v, "unused.mp4") if x.get("category") == cat)
                prompt, conts = encode_mcq_options(r["messages"][:1], list(synthetic.LETTERS[:len(r["options"])]),
                                                   tok, system_prompt=system, order=order)
                rows = [(0, Encoded(prompt.input_ids + c, [0] * len(prompt) + [1] * len(c))) for c in conts]
                logps = model(**_encoded_batch(rows, [fr], pad_id), mode=eval_mode, return_logits=False)["logps"]
                right += synthetic.LETTERS[int(logps.argmax())] == r["answer"]
            acc[cat] = right / len(bench_v)
        model.train()
        acc["total"] = sum(acc.values()) / 4
        return acc

    def run(n: int, pool: list, lrs: dict, mode: str = "coarse_fine") -> None:
        """One stage, as `fvlm train` runs it: a fresh AdamW, warmup 3%, cosine to 0.1x, grad clip 1.0 over what trains;
        a group with LR 0 is frozen (no gradient, outside the clip), like `optim.GROUP.frozen`."""
        for g, ps in groups.items():
            for p in ps:
                p.requires_grad_(lrs[g] > 0)
        live = {g: ps for g, ps in groups.items() if lrs[g] > 0}
        opt = torch.optim.AdamW([{"params": ps, "name": g} for g, ps in live.items()], lr=1e-3, weight_decay=0.01)
        trainable = [p for ps in live.values() for p in ps]
        for step in range(n):
            scale = min(1.0, (step + 1) / max(1, int(0.03 * n))) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / n)))
            for g in opt.param_groups:
                g["lr"] = lrs[g["name"]] * scale
            loss = model(**_encoded_batch(rng.sample(pool, batch), frames, pad_id), mode=mode)["loss"]
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()

    if oracle:
        patch_oracle()
    t0 = time.perf_counter()
    run(stage1, s1, {"connector": s1_connector_lr, "dino": s1_dino_lr, "llm": 3e-4})
    after_stage1 = token_stats(model, bench_v[:64])
    if direction_first:  # a curriculum: stage 2 opens with direction questions only (same LRs and schedule)
        run(direction_first, s2_dir, {"connector": 1e-3, "dino": s2_dino_lr, "llm": s2_llm_lr}, train_mode)
    run(steps, s2, {"connector": 1e-3, "dino": s2_dino_lr, "llm": s2_llm_lr}, train_mode)
    row = {"tokens": "oracle" if oracle else "tiny DINO + query", "frame": frame, "stage1_steps": stage1,
           "stage1_connector_lr": s1_connector_lr, "stage1_dino_lr": s1_dino_lr, "stage1_targets": s1_targets,
           "stage2_steps": steps, "stage2_dino_lr": s2_dino_lr, "stage2_llm_lr": s2_llm_lr, "direction_first": direction_first, "videos": n_videos, "order": order, "model_overrides": list(model_overrides), "stage2_mode": train_mode, "eval_mode": eval_mode, "seed": seed,
           "tokens_after_stage1": after_stage1, "accuracy": evaluate(), "seconds": time.perf_counter() - t0}
    print(json.dumps(row), flush=True)
    return row


def cmd_recipe(args) -> dict:
    rows = [recipe_run(args.oracle, args.stage1, args.s1_connector_lr, args.s1_targets, args.steps, seed,
                       n_videos=args.videos, frame=args.frame, s1_dino_lr=args.s1_dino_lr, s2_dino_lr=args.s2_dino_lr,
                       order=args.order, model_overrides=tuple(args.set), train_mode=args.train_mode,
                       eval_mode=args.eval_mode, s2_llm_lr=args.s2_llm_lr, direction_first=args.direction_first)
            for seed in args.seeds]
    for row in rows:
        row["task"] = ({"name": "grid (shipped)"} if args.task == "grid" else
                       {"name": "smooth", "frame": args.frame, "shape_scale": args.shape_scale, "lanes": args.lanes})
    return {"what": "in-memory stage 1 + stage 2 of the tiny preset, held-out synthetic MCQ (coarse_fine)", "rows": rows}


def _stage1_steps(n: int, where: Path) -> None:
    """Point the speedrun at a copy (in `where`) of the shipped configs whose tiny stage 1 runs `n` steps (stage 2 and
    DPO keep their own step counts)."""
    import re
    import shutil

    from fvlm_cli import config as cfglib

    copy = where / "configs"
    shutil.copytree(cfglib.CONFIG_DIR, copy, dirs_exist_ok=True)
    path = copy / "train" / "tiny-stage1.yaml"
    path.write_text(re.sub(r"(?m)^  steps: \d+", f"  steps: {n}", path.read_text()))
    cfglib.CONFIG_DIR = copy


def cmd_oracle(args) -> dict:
    from fvlm_cli.speedrun import run_speedrun

    if args.tokens == "oracle":
        patch_oracle()
    if args.stage1_steps is not None:
        _stage1_steps(args.stage1_steps, Path(args.out))  # kept beside the run: what it trained with
    info = run_speedrun(args.out, steps_scale=args.steps_scale, overrides=args.set)
    what = "oracle frame tokens (object centroid, area, colour)" if args.tokens == "oracle" else "the tiny preset's tokens"
    return {"what": f"the speedrun with {what}", "tokens": args.tokens, "steps_scale":
            args.steps_scale, "stage1_steps": args.stage1_steps, "overrides": args.set, "bench": info["bench"]["results"], "seconds": info["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("learn")
    a.add_argument("--steps", type=int, default=600)
    a.add_argument("--videos", type=int, default=1000)
    a.add_argument("--task", choices=("grid", "smooth"), default="grid",
                   help="grid: the shipped task; smooth: the earlier one (shapes at any sub-patch offset)")
    p = sub.add_parser("probe")
    p.add_argument("runs", nargs="+")
    p.add_argument("--videos", type=int, default=1200)
    o = sub.add_parser("oracle")
    o.add_argument("run_out")
    o.add_argument("--steps-scale", type=float, default=1.0)
    o.add_argument("--set", action="append", default=[])
    o.add_argument("--stage1-steps", type=int, default=None, help="tiny stage 1 steps (default: the shipped 300)")
    o.add_argument("--tokens", choices=("oracle", "dino"), default="oracle", help="dino: the real vision path (a control)")
    r = sub.add_parser("recipe")
    r.add_argument("--oracle", action="store_true")
    r.add_argument("--stage1", type=int, default=300)
    r.add_argument("--s1-connector-lr", type=float, default=3e-3)
    r.add_argument("--s1-dino-lr", type=float, default=3e-4, help="stage 1 DINO LR (0 with --s1-connector-lr 0: "
                   "the vision path frozen in stage 1)")
    r.add_argument("--s2-dino-lr", type=float, default=3e-4)
    r.add_argument("--s2-llm-lr", type=float, default=1e-3)
    r.add_argument("--direction-first", type=int, default=0,
                   help="curriculum: this many stage-2 steps on direction questions only, before the stage-2 steps")
    r.add_argument("--videos", type=int, default=400, help="training videos")
    r.add_argument("--train-mode", choices=("coarse_only", "coarse_fine"), default="coarse_fine", help="stage 2's mode")
    r.add_argument("--eval-mode", choices=("coarse_only", "coarse_fine"), default="coarse_fine")
    r.add_argument("--set", action="append", default=[], help="tiny preset override, e.g. dino_config.initializer_range=0.1")
    r.add_argument("--order", choices=("video_first", "question_first"), default="video_first",
                   help="where the frames go in every training and test prompt (SPEC §2.3)")
    r.add_argument("--s1-targets", choices=("all", "answer"), default="all")
    r.add_argument("--steps", type=int, default=1200)
    r.add_argument("--seeds", type=int, nargs="+", default=[0])
    r.add_argument("--task", choices=("grid", "smooth"), default="grid",
                   help="grid: the shipped task; smooth: the earlier one (shapes at any sub-patch offset)")
    r.add_argument("--frame", type=int, default=64, help="smooth task: frame size in pixels (the tiny DINO's too)")
    r.add_argument("--shape-scale", type=float, default=1.0, help="smooth task: shapes this much larger")
    r.add_argument("--lanes", default="0.2,0.5,0.8", help="smooth task: lanes across the motion (fractions)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    task = getattr(args, "task", None)
    if task == "smooth":
        use_task_variant(getattr(args, "frame", 64), getattr(args, "shape_scale", 1.0),
                         tuple(float(x) for x in getattr(args, "lanes", "0.2,0.5,0.8").split(",")))
    elif task == "grid" and (getattr(args, "shape_scale", 1.0) != 1.0 or getattr(args, "frame", 64) != 64):
        ap.error("--frame and --shape-scale change the smooth task only: add --task smooth")
    if args.cmd == "oracle":
        args.out, out_json = args.run_out, args.out
        res = cmd_oracle(args)
        args.out = out_json
    else:
        res = {"learn": cmd_learn, "probe": cmd_probe, "recipe": cmd_recipe}[args.cmd](args)
    res.update(torch=torch.__version__, threads=torch.get_num_threads())
    # the smooth task's records keep their names; the grid task's get their own files
    suffix = "_grid" if task == "grid" else ""
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"speedrun_vision_{args.cmd}{suffix}.json")
    if args.cmd == "recipe" and out.exists():  # each recipe call adds its rows to the recorded table
        res["rows"] = json.loads(out.read_text())["rows"] + res["rows"]
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
