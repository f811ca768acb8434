"""results.md: one compact GitHub-markdown table per benchmark, published SmolVLM2 numbers beside ours.

`results` is what `fvlm bench` writes to results.json:

    {"model": str,
     "benchmarks": {bench: {"chance": float (optional, a fraction),
                            mode: {method: leaf}}}}

A leaf is one of
- MCQ:        {"accuracy", "correct", "total", "se", "per_category", "seconds"} (POPE may add "f1", "yes_ratio")
- captioning: the `score_captions` dict {"CIDEr", "BLEU-4", "ROUGE-L", "METEOR", "n", "notes", ...} (+ "seconds")
- val-loss:   {"loss", "tokens"} (+ "seconds")
Fractions are shown as percentages with one decimal; CIDEr is shown x100 like the other caption metrics.
"""

from __future__ import annotations

import re

__all__ = ["PUBLISHED", "render_results_md", "render_mode_table", "format_accuracy"]

# Published SmolVLM2 accuracies (%), from the SmolVLM2 release; keyed by normalised benchmark name.
PUBLISHED: dict[str, dict[str, float]] = {
    "mvbench": {"SmolVLM2-256M": 32.7, "SmolVLM2-500M": 39.7, "SmolVLM2-2.2B": 46.3},
    "video-mme": {"SmolVLM2-256M": 33.7, "SmolVLM2-500M": 42.2, "SmolVLM2-2.2B": 52.1},
}

_CAPTION_METRICS = ("CIDEr", "BLEU-4", "ROUGE-L", "METEOR")
_DASH = "—"
_EXTRA_LABELS = {"f1": "F1 (%)", "yes_ratio": "yes (%)"}  # POPE extras


def _key(name: str) -> str:
    """'Video-MME', 'video_mme', 'videomme' -> 'videomme'."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _published(bench: str) -> dict[str, float]:
    return next((v for k, v in PUBLISHED.items() if _key(k) == _key(bench)), {})


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


def render_mode_table(rows: list[dict], references: list[tuple[str, float]] = ()) -> str:
    """One table for rows of one kind: each row is a leaf plus "mode" and "method" keys.

    references: (label, accuracy in %) rows appended under an MCQ table (published numbers, chance).
    """
    if not rows:
        return ""
    kind = _kind(rows[0])
    names = [[r.get("mode"), r.get("method")] for r in rows]
    seconds = [_num(r.get("seconds"), ".1f") for r in rows]
    if kind == "mcq":
        extra = [k for k in _EXTRA_LABELS if any(k in r for r in rows)]
        header = ["mode", "method", "accuracy (%)", *[_EXTRA_LABELS[k] for k in extra], "n", "seconds"]
        body = [
            [*name, format_accuracy(r.get("accuracy"), r.get("se")), *[_pct(r.get(k)) for k in extra],
             r.get("total"), s]
            for name, r, s in zip(names, rows, seconds)
        ]
        body += [[label, "", f"{acc:.1f}", *[""] * len(extra), "", ""] for label, acc in references]
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
    return _table(header, body)


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


def _per_category(rows: list[dict]) -> str:
    """Categories x (mode/method) accuracies, folded away in a <details> block."""
    rows = [r for r in rows if r.get("per_category")]
    cats = sorted({c for r in rows for c in r["per_category"]})
    if not cats:
        return ""
    header = ["category", *[f"{r['mode']} / {r['method']}" for r in rows]]
    body = [[c, *[_pct(r["per_category"].get(c, {}).get("accuracy")) for r in rows]] for c in cats]
    return "<details><summary>per category (%)</summary>\n\n" + _table(header, body, text_cols=1) + "\n\n</details>"


def render_results_md(results: dict, *, per_category: bool = False) -> str:
    """The results.md text: a heading, then per benchmark a table of mode x method rows.

    MCQ tables give accuracy ± clustered SE (%), n and seconds, followed by the published SmolVLM2
    accuracies for that benchmark where known (`PUBLISHED`) and a random-chance row when the benchmark
    has a "chance" field. Caption tables list caption notes (e.g. why METEOR was skipped) underneath.
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
            refs = []
            if kind == "mcq":
                refs = [(f"{name} (published)", acc) for name, acc in _published(bench).items()]
                if isinstance(bench_results.get("chance"), (int, float)):
                    refs.append(("random chance", 100 * bench_results["chance"]))
            tables.append(render_mode_table(kind_rows, refs))
            notes = list(dict.fromkeys(n for r in kind_rows for n in (r.get("notes") or [])))
            if notes:
                tables.append("\n".join(f"- {_cell(n)}" for n in notes))
            if per_category and kind == "mcq" and (details := _per_category(kind_rows)):
                tables.append(details)
        parts.append("\n\n".join(tables))
    return "\n".join(parts) + "\n"
