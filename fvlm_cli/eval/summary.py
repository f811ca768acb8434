"""Scored rows -> the result leaves of results.json (accuracy, clustered SEs, breakdowns, POPE, lmms-eval scores).

An MCQ leaf:
    {"protocol", "method", "frame_policy", "accuracy", "correct", "total", "se", "chance", "seconds",
     "per_category": {cat: {"accuracy", "correct", "total", "se"}},
     "breakdowns": {facet: {value: {"accuracy", "correct", "total", "se"}}},   # e.g. Video-MME duration
     POPE: "precision", "recall", "f1", "yes_ratio" and per category the same;  lmms-eval: "lmms_eval_score"}
Every standard error is clustered by the row's cluster (the video; a question is its own cluster otherwise).
Breakdown facets are the extra fields a benchmark's shards carry (`FACETS`): Video-MME's duration (short /
medium / long), domain, sub_category and task_type. MVBench's task and POPE's category are the row's category.
"""

from __future__ import annotations

from typing import Sequence

from fvlm_cli.eval.stats import accuracy_summary, pope_metrics

FACETS = ("duration", "domain", "sub_category", "task_type")


def facets(record: dict) -> dict:
    """The breakdown fields of a shard record, as strings: under "meta" (where precompute keeps a source's own
    fields), else at the top level or under "extra"."""
    nested = [record.get(k) for k in ("meta", "extra") if isinstance(record.get(k), dict)]
    out = {}
    for k in FACETS:
        v = next((d[k] for d in nested if d.get(k) not in (None, "")), record.get(k))
        if v not in (None, ""):
            out[k] = str(v)
    return out


def breakdowns(rows: Sequence[dict]) -> dict:
    """{facet: {value: accuracy summary}} for every facet some row carries (rows without it are left out)."""
    out = {}
    for f in FACETS:
        groups: dict[str, list[dict]] = {}
        for r in rows:
            v = (r.get("facets") or {}).get(f)
            if v is not None:
                groups.setdefault(v, []).append(r)
        if groups:
            out[f] = {v: {k: s[k] for k in ("accuracy", "correct", "total", "se")}
                      for v, s in sorted((v, accuracy_summary(g)) for v, g in groups.items())}
    return out


def _pope(rows: Sequence[dict], predicted_text, protocol: str) -> dict:
    """POPE's extra metrics; under --protocol lmms-eval computed as lmms-eval computes them (its exact yes/no
    reading, and a yes_ratio of the ground truth), so they compare with its printout."""
    from fvlm_cli.eval.letters import index as letter_index
    from fvlm_cli.eval.stats import pope_metrics_lmms_eval

    truths = [r["options"][letter_index(r["truth"])] for r in rows]
    if protocol == "lmms-eval":
        return pope_metrics_lmms_eval([str(r.get("generated") or "") for r in rows], truths)
    pope = pope_metrics([predicted_text(r, r["options"]) for r in rows], truths)
    return {k: pope[k] for k in ("precision", "recall", "f1", "yes_ratio")}


def mcq_leaf(bench: str, rows: Sequence[dict], *, protocol: str, method: str, frame_policy: str,
             chance: float) -> dict:
    """The results.json leaf of one benchmark x mode x method."""
    from fvlm_cli.eval import lmms_eval
    from fvlm_cli.eval.mcq import predicted_text

    leaf = {"protocol": protocol, "method": method, "frame_policy": frame_policy, **accuracy_summary(rows)}
    leaf["seconds"] = sum(r.get("seconds", 0.0) for r in rows)
    leaf["chance"] = chance
    if bd := breakdowns(rows):
        leaf["breakdowns"] = bd
    if bench == "pope" and rows:
        leaf.update(_pope(rows, predicted_text, protocol))
        by: dict[str, list[dict]] = {}
        for r in rows:
            by.setdefault(str(r.get("category") or "uncategorized"), []).append(r)
        for cat, group in by.items():
            leaf["per_category"][cat].update(_pope(group, predicted_text, protocol))
    if protocol == "lmms-eval" and (score := lmms_eval.lmms_eval_score(bench, rows)) is not None:
        leaf["lmms_eval_score"] = score
    return leaf
