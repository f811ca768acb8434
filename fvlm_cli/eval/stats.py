"""Accuracy statistics: clustered standard errors, per-category summaries, POPE metrics, chance level."""

from __future__ import annotations

import math
import re
from collections import defaultdict

__all__ = ["clustered_se", "accuracy_summary", "pope_metrics", "yes_no", "chance_accuracy"]


def clustered_se(correct: list[float | bool], clusters: list[str]) -> float:
    """Standard error of the mean accuracy, clustered by `clusters` (e.g. the video id).

    Questions about the same video are not independent, so the usual binomial SE is too small. This is
    the cluster-robust (sandwich) variance of a mean with the small-sample factor G/(G-1) — Stata's
    `regress y, vce(cluster g)` for an intercept-only model:

        p = mean(y),  S_g = sum_{i in g} (y_i - p),  Var(p) = G/(G-1) * sum_g S_g^2 / n^2,  SE = sqrt(Var)

    with n answers in G clusters. With every answer its own cluster it is sqrt(p(1-p)/(n-1)): the
    binomial SE with the unbiased (n-1) variance. NaN when fewer than two clusters (undefined).
    """
    if len(correct) != len(clusters):
        raise ValueError(f"{len(correct)} answers but {len(clusters)} cluster ids")
    n = len(correct)
    sums: dict[str, float] = defaultdict(float)
    p = sum(float(y) for y in correct) / n if n else 0.0
    for y, g in zip(correct, clusters):
        sums[g] += float(y) - p
    n_clusters = len(sums)
    if n_clusters < 2:
        return float("nan")
    var = n_clusters / (n_clusters - 1) * sum(s * s for s in sums.values()) / n**2
    return math.sqrt(var)


def accuracy_summary(records: list[dict]) -> dict:
    """Accuracy, counts, clustered SE and per-category accuracy of scored questions.

    records: dicts with "correct" (bool), "category" (str; missing -> "uncategorized") and "cluster"
    (str, e.g. the video id; missing -> the question is its own cluster).
    Returns {"accuracy", "correct", "total", "se", "per_category": {cat: {"accuracy", "correct", "total", "se"}}};
    "accuracy" is None for no records and "se" is None where undefined (fewer than two clusters).
    """
    ys = [bool(r["correct"]) for r in records]
    clusters = [str(r["cluster"]) if r.get("cluster") is not None else f"#{i}" for i, r in enumerate(records)]
    per: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        per[str(r.get("category") or "uncategorized")].append(i)
    return {
        **_summary(ys, clusters),
        "per_category": {cat: _summary([ys[i] for i in idx], [clusters[i] for i in idx])
                         for cat, idx in sorted(per.items())},
    }


def _summary(ys: list[bool], clusters: list[str]) -> dict:
    se = clustered_se(ys, clusters) if ys else float("nan")
    return {"accuracy": sum(ys) / len(ys) if ys else None, "correct": sum(ys), "total": len(ys),
            "se": None if math.isnan(se) else se}


def yes_no(text: str) -> str | None:
    """"yes"/"no" from an answer's first word ("Yes, there is..." -> "yes"), or None."""
    m = re.match(r"\W*(yes|no)\b", (text or "").lower())
    return m.group(1) if m else None


def pope_metrics(preds: list[str], truths: list[str]) -> dict:
    """POPE metrics with "yes" as the positive class.

    Predictions are read with `yes_no`; one that is neither yes nor no is wrong and counts as a
    negative prediction (it did not say yes). Truths must be yes/no.
    Returns {"accuracy", "precision", "recall", "f1", "yes_ratio", "total"}; precision, recall and f1 are
    0.0 where their denominator is 0.
    """
    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} predictions but {len(truths)} truths")
    if not preds:
        raise ValueError("pope_metrics needs at least one prediction")
    tp = fp = fn = tn = 0
    for pred, truth in zip(preds, truths):
        t = yes_no(truth)
        if t is None:
            raise ValueError(f"POPE truth must be yes or no, got {truth!r}")
        p = yes_no(pred)
        if p == "yes":
            tp += t == "yes"
            fp += t == "no"
        else:
            fn += t == "yes"
            tn += t == "no" and p == "no"
    n = len(preds)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / n,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / n,
        "total": n,
    }


def pope_metrics_lmms_eval(generations: list[str], truths: list[str]) -> dict:
    """POPE's precision, recall, f1 and yes_ratio as lmms-eval's pope/utils.py aggregates them: a prediction is
    the lower-cased, stripped generation and only an exact "yes" / "no" counts (anything else is neither a positive
    nor a negative prediction), and yes_ratio is the share of *ground-truth* yes (0.5 on POPE's balanced splits),
    not of predicted yes as in `pope_metrics`. A zero denominator gives 0, as there."""
    tp = fp = fn = yes = 0
    for gen, truth in zip(generations, truths, strict=True):
        pred, gt = (gen or "").lower().strip(), truth.lower().strip()
        tp += gt == "yes" and pred == "yes"
        fp += gt == "no" and pred == "yes"
        fn += gt == "yes" and pred == "no"
        yes += gt == "yes"
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "yes_ratio": yes / len(truths) if truths else 0.0}


def chance_accuracy(n_options_list: list[int]) -> float:
    """Expected accuracy of uniform guessing: the mean of 1/k over the questions' option counts."""
    if not n_options_list:
        raise ValueError("chance_accuracy needs at least one question")
    if any(k < 1 for k in n_options_list):
        raise ValueError("every question needs at least one option")
    return sum(1.0 / k for k in n_options_list) / len(n_options_list)
