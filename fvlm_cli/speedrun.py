"""`fvlm speedrun`: the whole pipeline offline on the synthetic dataset (SPEC §8).

synthetic data -> precompute -> stage 1 -> stage 2 -> DPO -> bench synthetic (three modes) -> captions
-> OUT/report.md. Each step writes OUT/.done/<step>.json when it finishes, so re-running with the same
--out resumes after the last finished step (a step that was interrupted resumes from its own checkpoint).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fvlm_cli import config as cfglib

STEPS = ("data", "stage1", "stage2", "dpo", "bench", "caption", "report")
CAPTION_VIDEOS = (7, 11, 19, 23)  # held-out bench videos captioned in the report

# (name, split, kinds): the shard sets the recipe reads
DATA_SETS = (
    ("caption", "train", "caption"),
    ("sft", "train", "sft,mcq"),
    ("text", "train", "text"),
    ("dpo", "train", "dpo"),
    ("val", "val", "caption,sft,mcq"),
    ("bench", "bench", "mcq"),
)


def _say(msg: str) -> None:
    import sys

    print(f"[speedrun] {msg}", file=sys.stderr, flush=True)


class _Steps:
    def __init__(self, out: Path):
        self.dir = out / ".done"
        self.dir.mkdir(parents=True, exist_ok=True)

    def done(self, name: str) -> dict | None:
        p = self.dir / f"{name}.json"
        return json.loads(p.read_text()) if p.exists() else None

    def finish(self, name: str, info: dict) -> dict:
        (self.dir / f"{name}.json").write_text(json.dumps(info, indent=2))
        return info


def run_speedrun(out: str | Path = "runs/speedrun", preset: str = "tiny", *, n_videos: int = 400,
                 steps_scale: float = 1.0, workers: int | None = None, device: str = "auto",
                 overrides: list[str] | None = None) -> dict:
    from fvlm_cli.data.precompute import run_precompute
    from fvlm_cli.data.sources.base import SourceOptions
    from fvlm_cli.settings import MediaConfig
    from fvlm_cli.train.loop import load_run_config, train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = _Steps(out)
    info: dict = {"preset": preset, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    data = out / "data"

    # 1. data
    if not (rec := steps.done("data")):
        t0 = time.perf_counter()
        counts = {}
        for name, split, kinds in DATA_SETS:
            extra = {"kinds": kinds, "media_dir": str(data / "_media")}  # each video is encoded once for all sets
            if split == "train":
                extra["n_videos"] = n_videos
            _say(f"precompute synthetic {split} [{kinds}] -> {data / name}")
            s = run_precompute("synthetic", None, data / name, workers=workers,
                               opts=SourceOptions(split=split, media=MediaConfig(image_size=64), extra=extra), shard_size=64,
                               progress=False)
            counts[name] = s.get("samples", s.get("written"))
        rec = steps.finish("data", {"seconds": time.perf_counter() - t0, "samples": counts})
    info["data"] = rec

    # 2-4. training stages
    def stage(name: str, config: str, init_from: str | None, dpo: bool, train_sets: list[str]):
        if (rec := steps.done(name)):
            return rec
        t0 = time.perf_counter()
        run = out / name
        base = load_run_config(str(cfglib.CONFIG_DIR / "train" / config))
        over = [f"out_dir={run}", f"data.train=[{', '.join('{path: ' + str(data / s) + '}' for s in train_sets)}]",
                f"train.device={device}", f"train.steps={max(2, int(base.train.steps * steps_scale))}"]
        if not dpo:
            over += [f"data.text=[{{path: {data / 'text'}}}]", f"data.val={data / 'val'}"]
        over.append(f"train.init_from={init_from}" if init_from else "train.init_from=null")
        if preset != "tiny":  # a pretrained LLM: stage 1 aligns the connector as SPEC §4 has it (tiny's holds it fixed)
            over += [f"model={preset}", "optim.connector.frozen=false", "optim.dino.frozen=false"]
        cfg = load_run_config(str(cfglib.CONFIG_DIR / "train" / config), over + list(overrides or []))
        from fvlm_cli.train import checkpoint

        _say(f"{name}: {cfg.train.steps} steps -> {run}")
        summary = train(cfg, dpo=dpo, resume=checkpoint.latest(run) is not None)
        return steps.finish(name, {"seconds": time.perf_counter() - t0, "run_dir": str(run), **summary})

    info["stage1"] = stage("stage1", "tiny-stage1.yaml", None, False, ["caption"])
    info["stage2"] = stage("stage2", "tiny-stage2.yaml", str(out / "stage1"), False, ["sft", "caption"])
    info["dpo"] = stage("dpo", "tiny-dpo.yaml", str(out / "stage2"), True, ["dpo"])
    final = out / "dpo"

    # 5. bench
    if not (rec := steps.done("bench")):
        from fvlm_cli.eval.bench import run_bench
        from fvlm_cli.model.build import load_model

        t0 = time.perf_counter()
        _say("bench synthetic, all modes")
        lm = load_model(str(final), device=device)
        res = run_bench(["synthetic"], lm, modes=["coarse_only", "coarse_fine", "autoregressive"],
                        methods=["loglik"], limit=None, out_dir=out / "bench", data_paths={"synthetic": str(data / "bench")},
                        progress=False)
        rec = steps.finish("bench", {"seconds": time.perf_counter() - t0, "results": res["benchmarks"]["synthetic"]})
    info["bench"] = rec

    # 6. captions of held-out videos, each attribute checked against the truth
    if not (rec := steps.done("caption")):
        from fvlm_cli.model.build import load_model
        from fvlm_cli.infer.core import generate

        from fvlm_cli.data import synthetic
        from fvlm_cli.data.sources.synthetic import SPLITS

        lm = load_model(str(final), device=device)
        rows = []
        for k in CAPTION_VIDEOS:
            sample = synthetic.make_video(SPLITS["bench"] + k, size=lm.model.image_size)  # held out: never trained on
            video = synthetic.write_video_file(sample, out / f"sample{k}.mp4")
            caps = {m: generate(lm, [str(video)], "Describe this video.", mode=m, max_new_tokens=24)[0].text
                    for m in ("coarse_only", "coarse_fine", "autoregressive")}
            rows.append({"video": str(video), "truth": synthetic.caption_for(sample), "captions": caps,
                         "correct": {m: caption_attributes(sample, t) for m, t in caps.items()}})
        first = rows[0]
        rec = steps.finish("caption", {"video": first["video"], "truth": first["truth"], "captions": first["captions"],
                                       "videos": rows})
    info["caption"] = rec
    info["seconds"] = sum(info[k].get("seconds", 0.0) for k in ("data", "stage1", "stage2", "dpo", "bench"))
    report = write_report(out, info)
    info["report"] = str(report)
    return info


def caption_attributes(sample, text: str) -> dict[str, bool]:
    """Which of colour, shape, direction and count a caption names correctly (whole words; 'squares' counts)."""
    import re

    from fvlm_cli.data import synthetic

    w = text.lower()
    word = lambda x: re.search(rf"\b{x}\b", w) is not None
    return {"colour": word(sample.color), "shape": word(sample.shape) or word(sample.shape + "s"),
            "direction": word(sample.direction), "count": word(synthetic._NUMBER_WORDS[sample.count])}


def write_report(out: Path, info: dict) -> Path:
    """OUT/report.md: stage table, bench table per mode, captions, plots. Kept short on purpose."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fvlm_cli.train.logger import read_metrics

    lines = [f"# fvlm speedrun ({info['preset']})", ""]
    lines += ["| step | seconds | result |", "|---|---:|---|"]
    d = info["data"]
    lines.append(f"| data | {d['seconds']:.0f} | {sum(v or 0 for v in d['samples'].values())} samples in {len(d['samples'])} shard sets |")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    offset = 0
    for name in ("stage1", "stage2", "dpo"):
        s = info[name]
        recs = read_metrics(Path(s["run_dir"]))
        tr = [(r["step"] + offset, r["loss"]) for r in recs if r.get("loss") is not None]
        if tr:
            ax.plot(*zip(*tr), label=name)
        val = s.get("val") or {}
        extra = f"val loss (coarse_fine) {val['loss_coarse_fine']:.3f}" if "loss_coarse_fine" in val else ""
        if "token_shared_fine" in val:  # near 1: every frame gives almost the same token (docs/LOG.md, issue 13)
            extra += f", visual tokens shared {val['token_shared_fine']:.2f}"
        if name == "dpo":
            tail = [r for r in recs if "rewards/accuracies" in r][-20:]
            acc = sum(r["rewards/accuracies"] for r in tail) / max(1, len(tail))
            margin = sum(r["rewards/margins"] for r in tail) / max(1, len(tail))
            extra = f"reward accuracy {acc:.2f}, margin {margin:.3f} (mean of the last {len(tail)} logged steps)"
        first = next((r["loss"] for r in recs if r.get("loss") is not None), float("nan"))
        lines.append(f"| {name} | {s['seconds']:.0f} | train loss {first:.3f} -> {s.get('final_loss') or float('nan'):.3f}; {extra} |")
        offset += s.get("steps", 0)
    ax.set_xlabel("step (stages back to back)"); ax.set_ylabel("train loss"); ax.legend(); ax.grid(alpha=0.3)
    fig.tight_layout(); fig.savefig(out / "loss_curves.png", dpi=100); plt.close(fig)
    b = info["bench"]["results"]
    lines += ["", "## Synthetic multiple choice (log-likelihood)", "", "| mode | accuracy | ± SE | n |", "|---|---:|---:|---:|"]
    modes, accs = [], []
    chance = None
    for mode, methods in b.items():
        if not isinstance(methods, dict):
            continue
        r = methods.get("loglik") or next(iter(methods.values()))
        chance = r.get("chance", chance)
        se = r.get("se")
        lines.append(f"| {mode} | {100 * r['accuracy']:.1f}% | {100 * se:.1f} | {r['total']} |" if se is not None
                     else f"| {mode} | {100 * r['accuracy']:.1f}% | – | {r['total']} |")
        modes.append(mode)
        accs.append(100 * r["accuracy"])
    chance = chance if chance is not None else 0.25
    lines.append(f"| random chance | {100 * chance:.1f}% | | |")
    best = max(accs) if accs else 0.0
    acc = dict(zip(modes, accs))
    lines += ["", f"The trained model answers {best:.1f}% of the synthetic questions in its best mode "
              f"(chance {100 * chance:.0f}%): {'far above' if best > 100 * chance + 20 else 'not far above'} chance."]
    if "coarse_fine" in acc and "coarse_only" in acc:
        lines.append(f"Foveation gap: coarse_fine {acc['coarse_fine']:.1f}% vs coarse_only {acc['coarse_only']:.1f}% "
                     f"({acc['coarse_fine'] - acc['coarse_only']:+.1f} points; the model is trained in coarse_fine, so "
                     f"coarse_only also measures how far its static-query tokens are from what it learned to read).")
    cats = sorted({c for m in modes for c in ((b[m].get("loglik") or {}).get("per_category") or {})})
    if cats:
        lines += ["", "| mode | " + " | ".join(cats) + " |", "|---|" + "---:|" * len(cats)]
        for m in modes:
            pc = (b[m].get("loglik") or {}).get("per_category") or {}
            lines.append(f"| {m} | " + " | ".join(f"{100 * pc[c]['accuracy']:.0f}%" if c in pc else "-" for c in cats) + " |")
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(modes, accs, color=["#999", "#4a8", "#48c"][: len(modes)])
    ax.axhline(100 * chance, color="r", ls="--", label="chance")
    ax.set_ylabel("accuracy %"); ax.set_ylim(0, 100); ax.legend()
    fig.tight_layout(); fig.savefig(out / "accuracy_by_mode.png", dpi=100); plt.close(fig)
    c = info["caption"]
    videos = c.get("videos") or [{"video": c["video"], "truth": c.get("truth", "?"), "captions": c["captions"], "correct": {}}]
    lines += ["", f"## Captions of {len(videos)} held-out videos", "",
              "| video | truth | mode | caption | colour / shape / direction / count |", "|---|---|---|---|---|"]
    for v in videos:
        for m, t in v["captions"].items():
            ok = v.get("correct", {}).get(m)
            marks = " / ".join("✓" if ok[a] else "✗" for a in ("colour", "shape", "direction", "count")) if ok else ""
            lines.append(f"| `{Path(v['video']).name}` | {v['truth']} | {m} | {t} | {marks} |")
    lines += ["", f"Total {info['seconds'] / 60:.1f} min.", "", "![loss](loss_curves.png) ![accuracy](accuracy_by_mode.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
