"""results.md: one compact GitHub-markdown table per benchmark, published numbers only beside rows of their protocol.

`results` is what `fvlm bench` writes to results.json:

    {"model": str,
     "benchmarks": {bench: {"chance": float (optional, a fraction),
                            mode: {method: leaf}}}}

A leaf is one of
- MCQ:        {"protocol", "method", "frame_policy", "accuracy", "correct", "total", "se", "per_category",
               "breakdowns", "seconds"} (POPE adds "f1", "yes_ratio"...; eval/summary.py)
- captioning: the `score_captions` dict {"CIDEr", "BLEU-4", "ROUGE-L", "METEOR", "n", "notes", ...} (+ "seconds")
- val-loss:   {"loss", "tokens"} (+ "seconds")
Fractions are shown as percentages with one decimal; CIDEr is shown x100 like the other caption metrics.
"""

from __future__ import annotations

import re
from typing import Optional

__all__ = ["PUBLISHED", "render_results_md", "render_mode_table", "format_accuracy"]

# Published accuracies (%), keyed by the protocol they were measured with: shown only beside rows of that protocol.
PUBLISHED: dict[str, dict] = {
    "reference": {
        "source": "released fVLM-135M (sanps/fVLM-135M model card; the original research code's scoring)",
        "per_mode": True,  # one number per mode: shown in a column beside the matching row
        "model": "fVLM-135M",
        "mvbench": {"coarse_only": 27.4, "coarse_fine": 28.0, "autoregressive": 27.9},
        "video-mme": {"coarse_only": 26.2, "coarse_fine": 29.5, "autoregressive": 28.7},
        "scienceqa": {"coarse_only": 36.4, "coarse_fine": 35.6, "autoregressive": 35.4},
        "pope": {"coarse_only": 50.0, "coarse_fine": 50.0, "autoregressive": 50.0},
    },
    "lmms-eval": {
        "source": "SmolVLM2 release (measured with lmms-eval)",
        "per_mode": False,  # other models: rows under the table
        "mvbench": {"SmolVLM2-256M": 32.7, "SmolVLM2-500M": 39.7, "SmolVLM2-2.2B": 46.3},
        "video-mme": {"SmolVLM2-256M": 33.7, "SmolVLM2-500M": 42.2, "SmolVLM2-2.2B": 52.1},
    },
}

_CAPTION_METRICS = ("CIDEr", "BLEU-4", "ROUGE-L", "METEOR")
_DASH = "—"
_EXTRA_LABELS = {"f1": "F1 (%)", "yes_ratio": "yes (%)", "lmms_eval_score": "lmms-eval score (%)"}


def _key(name: str) -> str:
    """'Video-MME', 'video_mme', 'videomme' -> 'videomme'."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _published(bench: str, protocol: str | None) -> tuple[dict[str, float], dict]:
    """(numbers, the protocol's entry) published for `bench` under `protocol`; ({}, {}) for any other protocol."""
    entry = PUBLISHED.get(protocol or "", {})
    return next((v for k, v in entry.items() if k not in ("source", "per_mode", "model") and isinstance(v, dict)
                 and _key(k) == _key(bench)), {}), entry


def _cell(value) -> str:
    return _DASH if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def _pct(x) -> str:
    return _DASH if x is None else f"{100 * x:.1f}"


def _num(x, fmt: str) -> str:
    return _DASH if x is None else format(x, fmt)


def format_accuracy(accuracy: float | None, se: float | None = None) -> str:
    """0.4123, 0.0112 -> '41.2 ± 1.1' (percent, one decimal); the '± SE' is dropped when SE is None."""
    if accuracy is None:
        return _DASH
    return _pct(accuracy) if se is None else f"{_pct(accuracy)} ± {_pct(se)}"


def _table(header: list[str], rows: list[list[str]], text_cols: int = 2) -> str:
    """Markdown table; the first `text_cols` columns left-aligned, numbers right-aligned."""
    align = [":--"] * text_cols + ["--:"] * (len(header) - text_cols)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _kind(leaf: dict) -> str:
    if "accuracy" in leaf:
        return "mcq"
    if any(m in leaf for m in _CAPTION_METRICS):
        return "caption"
    if "loss" in leaf:
        return "loss"
    return "other"


def render_mode_table(rows: list[dict], references: list[tuple[str, float]] = (),
                      published: Optional[dict[str, float]] = None, published_label: str = "published (%)") -> str:
    """One table for rows of one kind: each row is a leaf plus "mode" and "method" keys.

    references: (label, accuracy in %) rows appended under an MCQ table (published numbers, chance).
    published: {mode: accuracy in %}, a column beside the rows of those modes (same protocol only).
    """
    if not rows:
        return ""
    kind = _kind(rows[0])
    names = [[r.get("mode"), r.get("method")] for r in rows]
    seconds = [_num(r.get("seconds"), ".1f") for r in rows]
    if kind == "mcq":
        extra = [k for k in _EXTRA_LABELS if any(k in r for r in rows)]
        pub = [published_label] if published else []
        header = ["mode", "method", "protocol", "accuracy (%)", *pub, *[_EXTRA_LABELS[k] for k in extra], "n",
                  "seconds"]
        body = [
            [*name, r.get("protocol") or "fvlm", format_accuracy(r.get("accuracy"), r.get("se")),
             *([_num((published or {}).get(r.get("mode")), ".1f")] if published else []),
             *[_pct(r.get(k)) for k in extra], r.get("total"), s]
            for name, r, s in zip(names, rows, seconds)
        ]
        body += [[label, "", "", f"{acc:.1f}", *[""] * len(pub), *[""] * len(extra), "", ""]
                 for label, acc in references]
    elif kind == "caption":
        header = ["mode", "method", *[f"{m} (x100)" for m in _CAPTION_METRICS], "n", "seconds"]
        body = [
            [*name, *["n/a" if r.get(m) is None else _pct(r[m]) for m in _CAPTION_METRICS], r.get("n"), s]
            for name, r, s in zip(names, rows, seconds)
        ]
    elif kind == "loss":
        header = ["mode", "method", "loss", "tokens", "seconds"]
        body = [[*name, _num(r.get("loss"), ".4f"), r.get("tokens"), s] for name, r, s in zip(names, rows, seconds)]
    else:
        header = ["mode", "method", "values"]
        body = [
            [*name, ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("mode", "method"))]
            for name, r in zip(names, rows)
        ]
    return _table(header, body, text_cols=3 if kind == "mcq" else 2)


def _leaves(bench_results: dict) -> list[dict]:
    """Flatten {mode: {method: leaf}} into rows; non-dict entries such as "chance" are skipped."""
    rows = []
    for mode, methods in bench_results.items():
        if not isinstance(methods, dict):
            continue
        for method, leaf in methods.items():
            if isinstance(leaf, dict):
                rows.append({"mode": mode, "method": method, **leaf})
    return rows


def _group_table(title: str, rows: list[dict], groups_of) -> str:
    """Groups x (mode/method) accuracy ± clustered SE (%), folded away in a <details> block."""
    rows = [r for r in rows if groups_of(r)]
    groups = sorted({g for r in rows for g in groups_of(r)})
    if not groups:
        return ""
    header = ["", *[f"{r['mode']} / {r['method']}" for r in rows]]
    body = []
    for g in groups:
        cells = []
        for r in rows:
            v = groups_of(r).get(g) or {}
            cell = format_accuracy(v.get("accuracy"), v.get("se"))
            if "f1" in v:
                cell += f" (F1 {_pct(v['f1'])})"
            cells.append(f"{cell} (n={v['total']})" if v else _DASH)
        body.append([g, *cells])
    header[0] = title
    return (f"<details><summary>by {title} (%, ± clustered SE)</summary>\n\n" + _table(header, body, text_cols=1)
            + "\n\n</details>")


def _per_category(rows: list[dict]) -> str:
    parts = [_group_table("category", rows, lambda r: r.get("per_category") or {})]
    facets = sorted({f for r in rows for f in (r.get("breakdowns") or {})})
    parts += [_group_table(f, rows, lambda r, f=f: (r.get("breakdowns") or {}).get(f) or {}) for f in facets]
    return "\n\n".join(p for p in parts if p)


def exclusions_line(bench_results: dict) -> str:
    """What a benchmark's n leaves out, in one line (and so why it can be below the published question count)."""
    bits = []
    if ex := bench_results.get("excluded"):
        bits.append(f"{ex['questions']} question(s) excluded, their frames unreadable (e.g. {ex['examples'][0]})")
    if un := bench_results.get("unreadable_samples"):
        bits.append(f"{un['count']} unreadable sample(s) skipped in the shards")
    if n := bench_results.get("precompute_failures"):
        bits.append(f"{n} input(s) that precompute could not read, never in the shards (their failures.jsonl)")
    return ("**Not scored:** " + "; ".join(bits) + ". Accuracies are over the questions scored, so compare them "
            "with published numbers with that in mind.") if bits else ""


def render_results_md(results: dict, *, per_category: bool = False) -> str:
    """The results.md text: a heading, then per benchmark a table of mode x method rows.

    MCQ tables give the protocol, accuracy ± clustered SE (%), n and seconds. Published numbers appear only
    beside rows measured with the protocol they were published under (`PUBLISHED`), labelled with their
    source: the released fVLM-135M's per-mode numbers in a column beside `reference` rows, SmolVLM2's as rows
    under `lmms-eval` tables. A random-chance row follows when the benchmark has a "chance" field. Caption
    tables list caption notes (e.g. why METEOR was skipped) underneath.
    """
    parts = [f"# Results: {_cell(results.get('model', 'unknown model'))}", ""]
    parts.append("Accuracy in %, ± one standard error clustered by video; n = questions scored.")
    for bench, bench_results in (results.get("benchmarks") or {}).items():
        parts += ["", f"## {_cell(bench)}", ""]
        rows = _leaves(bench_results)
        if not rows:
            parts.append("_no results_")
            continue
        kinds: dict[str, list[dict]] = {}
        for r in rows:
            kinds.setdefault(_kind(r), []).append(r)
        tables = []
        for kind, kind_rows in kinds.items():
            refs, by_mode, label, sources = [], None, "published (%)", []
            if kind == "mcq":
                protocols = {r.get("protocol") or "fvlm" for r in kind_rows}
                protocol = protocols.pop() if len(protocols) == 1 else None
                numbers, entry = _published(bench, protocol)
                if numbers and entry.get("per_mode"):
                    by_mode, label = numbers, f"{entry['model']} published (%)"
                elif numbers:
                    refs = [(f"{name} (published)", acc) for name, acc in numbers.items()]
                if numbers:
                    sources.append(f"Published numbers: {entry['source']}; measured with the {protocol} protocol, "
                                   f"as these rows are.")
                if isinstance(bench_results.get("chance"), (int, float)):
                    refs.append(("random chance", 100 * bench_results["chance"]))
                policies = list(dict.fromkeys(r.get("frame_policy") for r in kind_rows if r.get("frame_policy")))
                if policies:
                    sources.insert(0, f"Frames: {'; '.join(policies)}.")
            tables.append(render_mode_table(kind_rows, refs, by_mode, label))
            notes = list(dict.fromkeys(n for r in kind_rows for n in (r.get("notes") or [])))
            if notes:
                tables.append("\n".join(f"- {_cell(n)}" for n in notes))
            if sources:
                tables.append("\n".join(sources))
            if per_category and kind == "mcq" and (details := _per_category(kind_rows)):
                tables.append(details)
        if left_out := exclusions_line(bench_results):
            tables.append(left_out)
        parts.append("\n\n".join(tables))
    return "\n".join(parts) + "\n"
