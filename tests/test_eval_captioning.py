"""Caption metrics on hand-computed cases, plus METEOR's skip notes and a cross-check with pycocoevalcap."""

import math
import shutil
import sys

import pytest

from fvlm_cli.errors import DataError
from fvlm_cli.eval import captioning
from fvlm_cli.eval.captioning import bleu, cider_d, rouge_l, score_captions, tokenize

REFS = {
    "v1": ["a man is riding a brown horse on the beach", "a person rides a horse along the sea shore"],
    "v2": ["two dogs are playing with a red ball in the park", "dogs chase a ball on the grass"],
    "v3": ["a woman is slicing tomatoes in a kitchen", "someone cuts vegetables on a wooden board"],
}


def test_tokenize_lowercases_splits_clitics_and_drops_punctuation():
    assert tokenize("A man's dog doesn't run, well-known! (Really?)") == [
        "a", "man", "'s", "dog", "does", "n't", "run", "well-known", "really",
    ]
    assert tokenize("") == [] and tokenize("...!") == []


def test_identical_captions_score_perfectly():
    refs = {k: [v[0]] for k, v in REFS.items()}
    preds = {k: v[0] for k, v in refs.items()}
    s = score_captions(preds, refs, meteor=False)
    assert s["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert s["ROUGE-L"] == pytest.approx(1.0)
    # Each caption's tf-idf vectors equal its reference's (every n-gram weight log(3) - log(1) > 0 or
    # shared with equal weight), cosine 1 for n = 1..4, length penalty 1 -> 10 per caption.
    assert s["CIDEr"] == pytest.approx(10.0)
    assert s["n"] == 3


def test_bleu4_hand_computed():
    # cand (9 tokens): a man is riding a horse on the beach; ref (10): a man is riding a brown horse on the beach
    # clipped precisions: 1-grams 9/9, 2-grams 7/8 (not "a horse"), 3-grams 5/7, 4-grams 3/6
    # BLEU-4 = (1 * 7/8 * 5/7 * 1/2)^(1/4) * exp(1 - 10/9) = (5/16)^(1/4) * exp(-1/9)
    cand = tokenize("a man is riding a horse on the beach")
    ref = tokenize("a man is riding a brown horse on the beach")
    expected = (5 / 16) ** 0.25 * math.exp(-1 / 9)
    assert bleu([cand], [[ref]]) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.66905, abs=1e-5)
    # The closest reference length sets the brevity penalty: a 9-token reference removes it.
    assert bleu([cand], [[ref, tokenize("one two three four five six seven eight nine")]]) == pytest.approx(
        (5 / 16) ** 0.25, abs=1e-6
    )


def test_rouge_l_hand_computed():
    # cand: the cat sat on a red mat (7); ref: the cat is on the mat (6)
    # LCS = "the cat on mat" = 4 -> P = 4/7, R = 4/6; F = (1 + 1.2^2) P R / (R + 1.2^2 P)
    p, r = 4 / 7, 4 / 6
    expected = (1 + 1.44) * p * r / (r + 1.44 * p)
    got = rouge_l([tokenize("the cat sat on a red mat")], [[tokenize("the cat is on the mat")]])
    assert got == pytest.approx(expected)
    assert expected == pytest.approx(0.624040, abs=1e-6)
    # P and R are maximised over references separately: P = 3/3 from the first, R = 1/1 from the second.
    assert rouge_l([["a", "b", "c"]], [[["a", "b", "c", "d", "e", "f"], ["a"]]]) == pytest.approx(1.0)
    # A candidate inside a longer reference: P = 1, R = 2/4 -> F = 2.44 * 0.5 / (0.5 + 1.44)
    assert rouge_l([["a", "b"]], [[["a", "b", "c", "d"]]]) == pytest.approx(2.44 * 0.5 / (0.5 + 1.44))


def test_cider_prefers_the_better_candidate():
    good = {
        "v1": "a man rides a horse on the beach",
        "v2": "two dogs play with a ball in the park",
        "v3": "a woman is slicing tomatoes in the kitchen",
    }
    bad = {"v1": "a kitchen", "v2": "a man is cooking food", "v3": "two dogs on a beach"}
    sg, sb = score_captions(good, REFS, meteor=False), score_captions(bad, REFS, meteor=False)
    assert sg["CIDEr"] > sb["CIDEr"] + 0.5
    assert sg["BLEU-4"] > sb["BLEU-4"]
    assert sg["ROUGE-L"] > sb["ROUGE-L"]


def test_cider_single_caption_corpus_is_zero():
    # log N = log 1 = 0 makes every idf weight 0: a property of CIDEr, not a bug.
    assert cider_d([["a", "dog"]], [[["a", "dog"]]]) == 0.0


def test_empty_and_missing_predictions():
    preds = {"v1": "", "v2": REFS["v2"][0]}  # v3 missing
    s = score_captions(preds, REFS, meteor=False)
    assert s["n"] == 3
    assert any("1 of 3 ids had no prediction" in n for n in s["notes"])
    # ROUGE-L: v2 is identical to one reference (1.0), v1 and v3 are empty (0.0) -> mean 1/3
    assert s["ROUGE-L"] == pytest.approx(1 / 3)
    # BLEU: only v2's 11 tokens are scored and all its n-grams match (precisions 1); closest reference
    # lengths: v1 empty -> shortest 9, v2 -> 11, v3 empty -> shortest 7, so BLEU-4 = exp(1 - 27/11)
    assert s["BLEU-4"] == pytest.approx(math.exp(1 - 27 / 11), abs=1e-6)
    all_empty = score_captions({k: "" for k in REFS}, REFS, meteor=False)
    assert all_empty["BLEU-4"] == 0.0 and all_empty["ROUGE-L"] == 0.0 and all_empty["CIDEr"] == 0.0


def test_bad_ids_are_data_errors():
    with pytest.raises(DataError):
        score_captions({"nope": "a dog"}, REFS, meteor=False)
    with pytest.raises(DataError):
        score_captions({}, {"v1": []}, meteor=False)
    with pytest.raises(DataError):
        score_captions({}, {}, meteor=False)


def test_meteor_skipped_without_java(monkeypatch):
    monkeypatch.setattr(captioning.shutil, "which", lambda name: None)
    s = score_captions({"v1": "a man rides a horse"}, REFS)
    assert s["METEOR"] is None and s["meteor_computed"] is False
    assert "METEOR skipped: java not found" in s["notes"]


def test_meteor_skipped_without_pycocoevalcap(monkeypatch):
    monkeypatch.setattr(captioning.shutil, "which", lambda name: "/usr/bin/java")
    monkeypatch.setitem(sys.modules, "pycocoevalcap.meteor.meteor", None)  # makes the import fail
    s = score_captions({"v1": "a man rides a horse"}, REFS)
    assert s["METEOR"] is None and s["meteor_computed"] is False
    assert any("pycocoevalcap is not installed" in n for n in s["notes"])


def test_meteor_disabled():
    s = score_captions({"v1": "a man"}, REFS, meteor=False)
    assert s["METEOR"] is None and s["notes"][-1] == "METEOR skipped: disabled"


@pytest.mark.slow  # starts a JVM and loads METEOR's paraphrase tables (~10 s)
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs java")
def test_meteor_computed_with_java():
    pytest.importorskip("pycocoevalcap.meteor.meteor")
    refs = {k: [v[0]] for k, v in REFS.items()}
    same = score_captions({k: v[0] for k, v in refs.items()}, refs, meteor_timeout_s=120)
    assert same["meteor_computed"] is True and same["METEOR"] == pytest.approx(1.0)
    assert not any("METEOR" in n for n in same["notes"])


def test_matches_pycocoevalcap_reference_implementation():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    preds = {"v1": "a man rides a horse on a beach", "v2": "dogs play with a ball", "v3": "a woman cuts tomatoes"}
    cands = [tokenize(preds[k]) for k in REFS]
    refs = [[tokenize(r) for r in REFS[k]] for k in REFS]
    gts = {k: [" ".join(t) for t in r] for k, r in zip(REFS, refs)}
    res = {k: [" ".join(c)] for k, c in zip(REFS, cands)}
    assert cider_d(cands, refs) == pytest.approx(Cider().compute_score(gts, res)[0], rel=1e-9)
    assert bleu(cands, refs) == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0][3], rel=1e-9)
    assert rouge_l(cands, refs) == pytest.approx(Rouge().compute_score(gts, res)[0], rel=1e-9)
