"""Clustered SE, accuracy summaries, POPE metrics and chance level, on hand-computed cases."""

import math

import pytest

from fvlm_cli.eval.stats import accuracy_summary, chance_accuracy, clustered_se, pope_metrics, yes_no


def test_clustered_se_hand_computed():
    # y = 1,1,0 | 1,0 | 0 in clusters v1 | v2 | v3: n = 6, G = 3, p = 3/6 = 0.5
    # cluster residual sums: v1 = 0.5 + 0.5 - 0.5 = 0.5, v2 = 0.5 - 0.5 = 0, v3 = -0.5
    # Var = G/(G-1) * sum S_g^2 / n^2 = 3/2 * (0.25 + 0 + 0.25) / 36 = 0.75 / 36 = 1/48
    y = [1, 1, 0, 1, 0, 0]
    g = ["v1", "v1", "v1", "v2", "v2", "v3"]
    assert clustered_se(y, g) == pytest.approx(math.sqrt(1 / 48))
    assert clustered_se([bool(v) for v in y], g) == pytest.approx(0.1443375673)


def test_clustering_widens_the_se_when_videos_are_all_right_or_all_wrong():
    # y = 1,1,1 | 0,0,0: p = 0.5, S_a = 1.5, S_b = -1.5, Var = 2/1 * (2.25 + 2.25) / 36 = 0.25 -> SE = 0.5
    y = [1, 1, 1, 0, 0, 0]
    assert clustered_se(y, list("aaabbb")) == pytest.approx(0.5)
    # Each answer its own cluster: sqrt(p(1-p)/(n-1)) = sqrt(0.25/5)
    assert clustered_se(y, list("abcdef")) == pytest.approx(math.sqrt(0.05))


def test_singleton_clusters_reduce_to_binomial_se_with_n_minus_1():
    y = [1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1]
    n, p = len(y), sum(y) / len(y)
    assert clustered_se(y, [str(i) for i in range(n)]) == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))


def test_clustered_se_edge_cases():
    assert math.isnan(clustered_se([1, 0, 1], ["v", "v", "v"]))  # one cluster: undefined
    assert clustered_se([1, 1, 1, 1], list("abab")) == 0.0  # all correct: no variance
    with pytest.raises(ValueError):
        clustered_se([1, 0], ["a"])


def test_accuracy_summary():
    records = [
        {"correct": True, "category": "count", "cluster": "v1"},
        {"correct": True, "category": "count", "cluster": "v1"},
        {"correct": False, "category": "order", "cluster": "v1"},
        {"correct": True, "category": "order", "cluster": "v2"},
        {"correct": False, "category": "order", "cluster": "v2"},
        {"correct": False, "category": "count", "cluster": "v3"},
    ]
    s = accuracy_summary(records)
    assert s["accuracy"] == 0.5 and s["correct"] == 3 and s["total"] == 6
    assert s["se"] == pytest.approx(math.sqrt(1 / 48))  # same data as the hand-computed case
    assert s["per_category"] == {
        "count": {"accuracy": 2 / 3, "correct": 2, "total": 3, "se": pytest.approx(4 / 9)},  # clusters v1 v1 v3
        "order": {"accuracy": 1 / 3, "correct": 1, "total": 3, "se": pytest.approx(2 / 9)},  # clusters v1 v2 v2
    }
    assert list(s["per_category"]) == ["count", "order"]


def test_accuracy_summary_defaults_and_empty():
    s = accuracy_summary([{"correct": True}, {"correct": False}])
    assert s["per_category"] == {"uncategorized": {"accuracy": 0.5, "correct": 1, "total": 2,
                                                   "se": pytest.approx(0.5)}}
    assert s["se"] == pytest.approx(math.sqrt(0.25 / 1))  # own clusters: sqrt(p(1-p)/(n-1))
    empty = accuracy_summary([])
    assert empty["accuracy"] is None and empty["total"] == 0 and empty["se"] is None
    one_video = accuracy_summary([{"correct": True, "cluster": "v"}, {"correct": False, "cluster": "v"}])
    assert one_video["se"] is None


def test_pope_metrics_hand_computed():
    preds = ["yes", "yes", "no", "no", "Yes, there is a dog.", "maybe"]
    truths = ["yes", "no", "yes", "no", "yes", "no"]
    # TP = 2 (rows 1, 5), FP = 1 (row 2), FN = 1 (row 3), TN = 1 (row 4); "maybe" is wrong and not a yes.
    m = pope_metrics(preds, truths)
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(3 / 6)
    assert m["total"] == 6


def test_pope_metrics_as_lmms_eval_aggregates_them():
    """lmms-eval's pope/utils.py: only an exact (lower-cased, stripped) yes/no is a prediction, and yes_ratio is the
    share of ground-truth yes."""
    from fvlm_cli.eval.stats import pope_metrics_lmms_eval

    gens = [" Yes ", "yes", "no", "no", "Yes, there is a dog.", "maybe"]
    truths = ["yes", "no", "yes", "no", "yes", "no"]
    # TP = 1 (row 1), FP = 1 (row 2), FN = 1 (row 3); "Yes, there is a dog." is neither a yes nor a no here
    m = pope_metrics_lmms_eval(gens, truths)
    assert m == pytest.approx({"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "yes_ratio": 3 / 6})
    assert pope_metrics_lmms_eval(["no"], ["no"]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0}


def test_pope_metrics_no_yes_predictions():
    m = pope_metrics(["no", "no"], ["yes", "no"])
    assert m == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0, "total": 2}
    with pytest.raises(ValueError):
        pope_metrics(["yes"], ["perhaps"])
    with pytest.raises(ValueError):
        pope_metrics(["yes"], ["yes", "no"])


def test_yes_no():
    assert yes_no("Yes.") == "yes" and yes_no("  NO, there isn't") == "no" and yes_no("**yes**") == "yes"
    assert yes_no("nothing") is None and yes_no("") is None


def test_chance_accuracy():
    assert chance_accuracy([4, 4, 2, 5]) == pytest.approx((0.25 + 0.25 + 0.5 + 0.2) / 4)  # = 0.3
    assert chance_accuracy([5] * 10) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        chance_accuracy([])
    with pytest.raises(ValueError):
        chance_accuracy([4, 0])
