"""The model card (README.md) of an exported model folder.

`build_card(conf, stages, results, ...)` returns a `huggingface_hub.ModelCard` whose YAML front matter is
what the Hub indexes (license, base_model, datasets, tags, pipeline_tag, library_name) and whose body is
compact: architecture and exact parameter count, the training stages with their data and hyperparameters
(from the saved run configs), benchmark tables (from results.json), usage, the media policy, limitations.
Only text here: the caller reads the run dir (fvlm_cli/release/upload.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

DEFAULT_LICENSE = "apache-2.0"
# "video-text-to-text" is a Hub pipeline tag (the task page exists); fvlm's primary input is video
PIPELINE_TAG = "video-text-to-text"
TAGS = ["video-text-to-text", "vision-language", "foveated", "fvlm", "smollm2", "dinov2"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class ShardInfo:
    """One shard set a stage trained on, described from its manifest.json when there is one."""

    path: str
    weight: float = 1.0
    text: bool = False               # a text-only set (text retention)
    source: Optional[str] = None     # precompute source name (cauldron, webvid, ...)
    hub_id: Optional[str] = None     # the Hub dataset it was made from, when known
    samples: Optional[int] = None


@dataclass
class Stage:
    """One training run of the chain that produced the exported weights (oldest first)."""

    name: str                        # run dir name
    config: dict                     # the run's resolved config.yaml, as saved
    kind: str = "sft"                # "sft" | "dpo"
    data: list[ShardInfo] = field(default_factory=list)
    init_from: Optional[str] = None  # what the stage started from, as written in its config
    metrics: dict = field(default_factory=dict)  # last / best logged values
    config_file: str = ""            # its copy in the export: configs/NN-name.yaml


def hub_ids(*names: Optional[str]) -> list[str]:
    """The names that look like Hub ids (owner/name); preset placeholders such as 'tiny-llama' are dropped."""
    return [n for n in names if n and HUB_ID.match(n)]


# The licence identifiers the Hub accepts in a card (hub-docs, repositories-licenses.md); any other value makes the
# upload fail at the Hub's metadata check, after the export, so it is refused before
HUB_LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5
cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0
cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0
cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0
lgpl lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0 odc-by odbl
openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license
fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma unknown other
""".split())


def check_license(value: str, where: str) -> str:
    """`value` if the Hub accepts it as a card licence, else a one-line FvlmError naming the closest ids."""
    import difflib

    from fvlm_cli.errors import FvlmError

    if value in HUB_LICENSES:
        return value
    guess = difflib.get_close_matches(value.lower().replace(" ", "-"), sorted(HUB_LICENSES), n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(guess)}?)" if guess else ""
    raise FvlmError(f"licence {value!r} from {where} is not one of the Hub's licence ids{hint}; for another "
                    f"licence use 'other' and add its text as LICENSE")


def resolve_license(cli: Optional[str], stages: list[Stage], conf: dict) -> str:
    """--license, else a `license` field of the newest run config (or config.json), else apache-2.0; checked
    against the Hub's licence ids (FvlmError)."""
    if cli:
        return check_license(cli, "--license")
    for st in reversed(stages):
        if isinstance(st.config.get("license"), str) and st.config["license"]:
            return check_license(st.config["license"], "the run config")
    return check_license(conf.get("license") or DEFAULT_LICENSE, "config.json")


def card_datasets(stages: list[Stage]) -> list[str]:
    """Hub dataset ids of every stage's training shards, in order of first use."""
    out: list[str] = []
    for st in stages:
        for d in st.data:
            if d.hub_id and d.hub_id not in out:
                out.append(d.hub_id)
    return out


def build_card(conf: dict, stages: list[Stage], results: Optional[dict] = None, *, repo_id: str = "",
               license: Optional[str] = None):
    """The ModelCard for an exported folder. conf: its config.json; results: results.json or None."""
    from huggingface_hub import ModelCard, ModelCardData

    base = conf.get("base_models", {})
    bases = hub_ids(base.get("llm"), base.get("dino"))
    datasets = card_datasets(stages)
    data = ModelCardData(
        license=resolve_license(license, stages, conf), base_model=bases or None,
        # several base models would otherwise be read by the Hub as a merge
        base_model_relation="finetune" if bases else None, datasets=datasets or None, language="en",
        tags=list(TAGS), pipeline_tag=PIPELINE_TAG, library_name="fvlm")
    body = "\n\n".join(s for s in (_title(conf, repo_id), _architecture(conf), _training(stages),
                                   _evaluation(results), _usage(conf, repo_id), _limitations(conf, bases)) if s)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


# ---- sections ------------------------------------------------------------------------------
def _title(conf: dict, repo_id: str) -> str:
    name = repo_id.split("/")[-1] if repo_id else f"fvlm-{conf.get('preset', 'model')}"
    base = conf.get("base_models", {})
    return (f"# {name}\n\nA foveated video vision-language model made with `fvlm` "
            f"{conf.get('fvlm_version', '')}: a SmolLM2 language model (`{base.get('llm', '?')}`) chooses where a "
            f"DINOv2 encoder (`{base.get('dino', '?')}`) looks in each frame, and every frame becomes **one "
            f"visual token**.")


def _architecture(conf: dict) -> str:
    llm, dino = conf.get("llm_config", {}), conf.get("dino_config", {})
    n = conf.get("num_parameters")
    lines = [
        "## Architecture", "",
        f"- **Vision encoder**: DINOv2, {dino.get('hidden_size', '?')}-d, {dino.get('num_hidden_layers', '?')} layers, "
        f"patch {dino.get('patch_size', '?')}, {conf.get('image_size', '?')}×{conf.get('image_size', '?')} frames.",
        f"- **Language model**: {llm.get('model_type', 'llama')}, {llm.get('hidden_size', '?')}-d, "
        f"{llm.get('num_hidden_layers', '?')} layers, vocabulary {llm.get('vocab_size', '?')}.",
        "- **Deep foveated query**: DINOv2 runs once per frame and keeps every layer's keys/values; a query "
        f"({conf.get('query_dim', '?')}-d) walks all layers against them and becomes one LLM token "
        f"(× visual_scale {conf.get('visual_scale', '?')}).",
        f"- **Parameters**: {n:,} (exact; tied embeddings counted once)." if isinstance(n, int) else None,
        "", "| mode | how a frame is read |", "|---|---|",
        "| `coarse_only` | the learned static query `q_static` for every frame (no foveation, fastest) |",
        "| `coarse_fine` | coarse tokens → LLM over the visual tokens → its state at frame t is the query for "
        "frame t+1 (`q_init` for frame 1); fine tokens read in parallel (the training mode) |",
        "| `autoregressive` | `q_init` reads frame 1, one LLM step gives the query for frame 2, and so on; the "
        "text continues on the same KV cache (true inference) |",
    ]
    return "\n".join(x for x in lines if x is not None)


def _float(x: Any, default: float = 0.0) -> float:
    """A config number; YAML reads `1e-3` (no dot) as a string."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return default


def _num(x: Any) -> str:
    if isinstance(x, str) and _float(x, None) is not None:
        x = float(x)
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return str(x)
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{x:.3g}").replace("e+", "e")


_STAGE_NAMES = {1: "1 · alignment (captions)", 2: "2 · VL-SFT", 3: "3 · video SFT"}


def _group_lr(g: dict) -> str:
    if not isinstance(g, dict):
        return "?"
    if g.get("frozen"):
        return "frozen"
    lr = _num(g.get("lr", "?"))
    return f"{lr}→{_num(g['lr_end'])}" if g.get("lr_end") is not None else lr


def _stage_row(i: int, st: Stage) -> str:
    c = st.config
    tr, op, dt = c.get("train", {}) or {}, c.get("optim", {}) or {}, c.get("data", {}) or {}
    if st.kind == "dpo":
        label = f"DPO (β={_num((c.get('dpo') or {}).get('beta', '?'))})"
    else:
        label = _STAGE_NAMES.get(tr.get("stage"), str(tr.get("stage", "?")))
    lrs = " / ".join(_group_lr(op.get(g, {})) for g in ("connector", "dino", "llm"))
    sched = str(op.get("schedule", "?"))
    if sched != "constant":
        sched += f", warmup {_num(_float(op.get('warmup', 0)) * 100)}%"
    if sched.startswith("cosine"):
        sched += f", floor {_num(op.get('min_lr_ratio', '?'))}×"
    batch = f"{dt.get('batch_size', '?')}" + (f"×{tr['grad_accum']}" if tr.get("grad_accum", 1) != 1 else "")
    data = "; ".join(_shard_text(d, dt) for d in st.data) or "—"
    done = ", ".join(f"{k} {_num(v)}" for k, v in st.metrics.items()) or "—"
    return (f"| {i} | {label} | {tr.get('steps', '?')} | {data} | {lrs} | {sched} | {batch} | "
            f"{tr.get('mode', '?')} | {done} |")


def _shard_text(d: ShardInfo, data_cfg: dict) -> str:
    name = f"[{d.hub_id}](https://huggingface.co/datasets/{d.hub_id})" if d.hub_id else (d.source or d.path.split("?", 1)[0].rstrip("/").split("/")[-1])
    if d.text:
        return f"{name} (text, {_num(_float(data_cfg.get('text_fraction', 0)) * 100)}%)"
    return name + (f" ×{_num(d.weight)}" if d.weight != 1 else "")


def _training(stages: list[Stage]) -> str:
    if not stages:
        return "## Training\n\nNo training configs were found beside this checkpoint."
    first = stages[0].init_from
    start = f"`{first}`" if first else "the base models"
    rows = "\n".join(_stage_row(i + 1, st) for i, st in enumerate(stages))
    files = ", ".join(f"`{st.config_file}`" for st in stages if st.config_file)
    grad_clip = (stages[-1].config.get("optim") or {}).get("grad_clip")
    clip = f", gradient clipping at {_num(grad_clip)}" if grad_clip else ""
    return ("## Training\n\n"
            f"Stages in order, starting from {start}; each stage starts from the previous one. LRs are per parameter "
            "group (connector / DINOv2 / LLM; a→b = converging schedule); batch = samples per micro-batch per GPU "
            f"(×gradient accumulation). AdamW{clip}.\n\n"
            "| # | stage | steps | data | LR conn / DINO / LLM | schedule | batch | mode | final metrics |\n"
            "|---|---|---|---|---|---|---|---|---|\n" + rows
            + (f"\n\nThe resolved config of every stage is in {files}." if files else ""))


def _cell(m: Any) -> str:
    if not isinstance(m, dict):
        return _num(m)
    if isinstance(m.get("accuracy"), (int, float)):
        acc = m["accuracy"] * (100 if m["accuracy"] <= 1 else 1)
        se = m.get("se")
        text = f"{acc:.1f}" + (f" ± {se * (100 if se <= 1 else 1):.1f}" if isinstance(se, (int, float)) else "")
        return text + (f" (n={m['total']})" if isinstance(m.get("total"), int) else "")
    nums = [(k, v) for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seconds"]
    return ", ".join(f"{k} {_num(v)}" for k, v in nums[:3]) or "—"


def _benchmark_table(name: str, by_mode: dict) -> str:
    """by_mode: {mode: {method: metrics}} or {mode: metrics}. Rows are modes, columns methods."""
    rows: dict[str, dict[str, Any]] = {}
    for mode, v in by_mode.items():
        if not isinstance(v, dict):
            continue
        if all(isinstance(x, dict) for x in v.values()) and v:
            rows[mode] = v
        else:
            rows[mode] = {"": v}
    methods = list(dict.fromkeys(m for r in rows.values() for m in r))
    if not rows:
        return ""
    head = "| mode | " + " | ".join(m or "result" for m in methods) + " |"
    sep = "|---|" + "---|" * len(methods)
    body = "\n".join(f"| {mode} | " + " | ".join(_cell(r.get(m)) if m in r else "—" for m in methods) + " |"
                     for mode, r in rows.items())
    return f"**{name}**\n\n{head}\n{sep}\n{body}"


def _evaluation(results: Optional[dict]) -> str:
    if not results or not isinstance(results.get("benchmarks"), dict) or not results["benchmarks"]:
        return ""
    tables = [t for name, by_mode in results["benchmarks"].items() if isinstance(by_mode, dict)
              for t in [_benchmark_table(name, by_mode)] if t]
    return ("## Evaluation\n\nFrom `fvlm bench` (`results.json` in this repo): accuracy in % ± standard error "
            "(clustered by video), per inference mode and scoring method.\n\n" + "\n\n".join(tables))


def _usage(conf: dict, repo_id: str) -> str:
    spec = repo_id or "PATH_TO_THIS_FOLDER"
    media, chat = conf.get("media", {}), conf.get("chat", {})
    frames = media.get("image_frames", 8)
    return (
        "## Usage\n\n```python\nfrom fvlm_cli import load_model, generate\n\n"
        f'lm = load_model("{spec}")\n'
        'out = generate(lm, ["clip.mp4"], prompt="Describe this video.", mode="autoregressive")\n'
        "print(out[0].text)\n```\n\n"
        f"```bash\npip install fvlm\nfvlm caption clip.mp4 --model {spec} --mode autoregressive\n"
        f"fvlm compare-modes clip.mp4 --model {spec}   # the three modes side by side\n```\n\n"
        f"Inputs: videos are sampled at {_num(media.get('fps', 1.0))} frame/s (at most {media.get('max_frames', 64)} "
        f"frames, spread uniformly over the whole video), the shorter side resized to {conf.get('image_size', '?')} and "
        f"centre-cropped. **Images are replicated to {frames} frames** (the training distribution), so an image is "
        f"read like a still {frames}-frame clip. The chat template is SmolLM2's with the system message "
        f"\"{chat.get('system_prompt', '')}\"; `fvlm` applies all of this for you.")


def _limitations(conf: dict, bases: list[str]) -> str:
    items = [
        "One token per frame: small text, fine detail and counting many objects are limited by what one foveated "
        "read of a frame can carry.",
        "English only (SmolLM2); it can state things that are not in the video. Not for safety-critical decisions.",
        "Loads with the `fvlm` library (`library_name: fvlm`), not with `transformers` Auto classes.",
    ]
    if not bases:
        items.insert(0, "Built from a test preset with random base weights: outputs are not meaningful.")
    return "## Limitations\n\n" + "\n".join(f"- {x}" for x in items)
