"""Corpus-level caption metrics: CIDEr-D, BLEU-4, ROUGE-L, and METEOR where Java exists.

The definitions follow the COCO caption evaluation toolkit (`pycocoevalcap`) so numbers are comparable
with published ones; only METEOR is delegated to that package (it drives a bundled Java jar).

Tokenisation (`tokenize`) stands in for COCO's Stanford PTB tokenizer: lower-case; split off English
clitics as PTB does ("don't" -> "do n't", "dog's" -> "dog 's"); keep word-internal hyphens
("well-known"); drop every other punctuation character. Small differences from PTB remain (e.g. on
numbers with commas), so scores can differ from the toolkit's in the third decimal on odd text.
"""

from __future__ import annotations

import math
import re
import shutil
import threading
from collections import Counter
from typing import Hashable

from fvlm_cli.errors import DataError

__all__ = ["tokenize", "score_captions", "cider_d", "bleu", "rouge_l"]

MAX_N = 4
CIDER_SIGMA = 6.0
ROUGE_BETA = 1.2
_TINY, _SMALL = 1e-15, 1e-9  # the COCO BLEU smoothing constants, so an empty corpus scores 0, not NaN

_CLITIC_NT = re.compile(r"n't\b")
_CLITIC = re.compile(r"'(s|re|ve|ll|d|m)\b")
_TOKEN = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*|'[^\W_]+")


def tokenize(text: str) -> list[str]:
    """Caption -> lower-case word tokens without punctuation (see module docstring)."""
    text = (text or "").lower().replace("’", "'")
    text = _CLITIC_NT.sub(" n't", text)
    text = _CLITIC.sub(r" '\1", text)
    return _TOKEN.findall(text)


def _ngrams(tokens: list[str], n: int = MAX_N) -> Counter:
    """Counts of every 1..n-gram (as tuples) in a token list."""
    return Counter(tuple(tokens[i:i + k]) for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


# ----------------------------------------------------------------------------------------- BLEU

def bleu(candidates: list[list[str]], references: list[list[list[str]]], n: int = MAX_N) -> float:
    """Corpus BLEU-n as the COCO toolkit computes it.

    Clipped n-gram matches and candidate n-gram counts are summed over the corpus; BLEU-n is the
    geometric mean of the n precisions times the brevity penalty exp(1 - r/c) when c < r, where c is the
    total candidate length and r sums, per caption, the reference length closest to the candidate's
    (ties -> the shorter).
    """
    correct, guess = [0] * n, [0] * n
    test_len = ref_len = 0
    for cand, refs in zip(candidates, references):
        max_ref = Counter()
        for ref in refs:
            max_ref |= _ngrams(ref, n)  # element-wise max: clip by the most generous reference
        for gram, count in _ngrams(cand, n).items():
            correct[len(gram) - 1] += min(count, max_ref[gram])
        for k in range(n):
            guess[k] += max(0, len(cand) - k)
        test_len += len(cand)
        ref_len += min((abs(len(r) - len(cand)), len(r)) for r in refs)[1]
    score = 1.0
    for k in range(n):
        score *= (correct[k] + _TINY) / (guess[k] + _SMALL)
    score **= 1.0 / n
    ratio = (test_len + _TINY) / (ref_len + _SMALL)
    if ratio < 1:
        score *= math.exp(1 - 1 / ratio)
    return score


# -------------------------------------------------------------------------------------- ROUGE-L

def _lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (one-row dynamic programme)."""
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, 1):
            prev_diag, row[j] = row[j], prev_diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(candidates: list[list[str]], references: list[list[list[str]]], beta: float = ROUGE_BETA) -> float:
    """Mean over captions of ROUGE-L F, as the COCO toolkit computes it.

    Per caption: precision P = max over references of LCS/len(candidate), recall R = max over references
    of LCS/len(reference) (maximised separately), F = (1 + beta^2) P R / (R + beta^2 P); 0 if P or R is 0.
    """
    scores = []
    for cand, refs in zip(candidates, references):
        p = r = 0.0
        for ref in refs:
            lcs = _lcs(cand, ref)
            if cand:
                p = max(p, lcs / len(cand))
            if ref:
                r = max(r, lcs / len(ref))
        scores.append((1 + beta**2) * p * r / (r + beta**2 * p) if p > 0 and r > 0 else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


# ---------------------------------------------------------------------------------------- CIDEr

def cider_d(candidates: list[list[str]], references: list[list[list[str]]], sigma: float = CIDER_SIGMA) -> float:
    """Corpus CIDEr-D as the COCO toolkit's `Cider` computes it.

    Each sentence becomes, per n in 1..4, a vector of tf-idf weights count(g) * (log N - log max(1, df(g))),
    with N captions in the corpus and df(g) the number of captions whose references contain n-gram g.
    Per (candidate, reference) pair and n: the clipped cosine sum_g min(c_g, r_g) r_g / (|c| |r|), times
    a Gaussian length penalty exp(-(l_c - l_r)^2 / (2 sigma^2)), where the toolkit's length l counts
    *bigrams* (kept for comparability). The caption's score is 10 x the mean over n and references; the
    corpus score is the mean over captions. With one caption log N = 0, so CIDEr is 0 by construction.
    """
    ref_grams = [[_ngrams(r) for r in refs] for refs in references]
    doc_freq = Counter()
    for grams in ref_grams:
        doc_freq.update(set().union(*grams))
    log_n = math.log(len(references)) if references else 0.0

    def tfidf(counts: Counter):
        vec = [dict() for _ in range(MAX_N)]
        norm = [0.0] * MAX_N
        for gram, tf in counts.items():
            k = len(gram) - 1
            vec[k][gram] = w = tf * (log_n - math.log(max(1.0, doc_freq[gram])))
            norm[k] += w * w
        bigrams = sum(tf for gram, tf in counts.items() if len(gram) == 2)
        return vec, [math.sqrt(x) for x in norm], bigrams

    scores = []
    for cand, grams in zip(candidates, ref_grams):
        c_vec, c_norm, c_len = tfidf(_ngrams(cand))
        total = 0.0
        for ref in grams:
            r_vec, r_norm, r_len = tfidf(ref)
            penalty = math.exp(-((c_len - r_len) ** 2) / (2 * sigma**2))
            for k in range(MAX_N):
                dot = sum(min(w, r_vec[k].get(g, 0.0)) * r_vec[k].get(g, 0.0) for g, w in c_vec[k].items())
                if c_norm[k] and r_norm[k]:
                    dot /= c_norm[k] * r_norm[k]
                total += dot * penalty / MAX_N
        scores.append(10.0 * total / len(grams))
    return sum(scores) / len(scores) if scores else 0.0


# --------------------------------------------------------------------------------------- METEOR

def _meteor(
    candidates: list[list[str]], references: list[list[list[str]]], timeout_s: float
) -> tuple[float | None, str | None]:
    """(METEOR, None) via pycocoevalcap's jar, or (None, why it was skipped)."""
    if shutil.which("java") is None:
        return None, "METEOR skipped: java not found"
    try:
        from pycocoevalcap.meteor.meteor import Meteor
    except ImportError:
        return None, "METEOR skipped: pycocoevalcap is not installed (pip install pycocoevalcap)"
    gts = {str(i): [" ".join(r) for r in refs] for i, refs in enumerate(references)}
    res = {str(i): [" ".join(c)] for i, c in enumerate(candidates)}
    out: dict = {}

    def work():
        try:
            out["meteor"] = Meteor()
            out["score"] = float(out["meteor"].compute_score(gts, res)[0])
        except Exception as e:  # noqa: BLE001 -- any failure of the external jar means "no METEOR"
            out["error"] = f"{type(e).__name__}: {e}"

    # The jar talks over pipes; a wedged JVM must not hang the benchmark, so bound it with a timeout.
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(timeout_s)
    proc = getattr(out.get("meteor"), "meteor_p", None)
    if proc is not None and proc.poll() is None:
        proc.kill()
    if worker.is_alive():
        return None, f"METEOR skipped: the Java scorer did not answer within {timeout_s:.0f}s"
    if "score" not in out:
        return None, f"METEOR skipped: the Java scorer failed ({out.get('error', 'unknown error')})"
    return out["score"], None


# ----------------------------------------------------------------------------------------- entry

def score_captions(
    predictions: dict[Hashable, str],
    references: dict[Hashable, list[str]],
    *,
    meteor: bool = True,
    meteor_timeout_s: float = 600.0,
) -> dict:
    """Score generated captions against references, over every id in `references`.

    predictions: {id: caption}; references: {id: [caption, ...]} (at least one non-empty list each).
    An id without a prediction is scored as an empty caption and counted in the notes; a prediction
    whose id has no references is a `DataError`.

    Returns {"CIDEr", "BLEU-4", "ROUGE-L", "METEOR", "meteor_computed", "n", "notes"}; metrics are raw
    fractions (CIDEr on its usual 0..10 scale). METEOR is None unless `meteor` is true, Java is on PATH
    and pycocoevalcap's scorer runs; the reason is then in "notes".
    """
    if not references:
        raise DataError("captioning: no references to score against")
    extra = [k for k in predictions if k not in references]
    if extra:
        raise DataError(f"captioning: {len(extra)} predictions have no references (e.g. id {extra[0]!r})")
    empty_refs = [k for k, refs in references.items() if not refs]
    if empty_refs:
        raise DataError(f"captioning: id {empty_refs[0]!r} has an empty reference list")

    ids = list(references)
    cands = [tokenize(predictions.get(k, "")) for k in ids]
    refs = [[tokenize(r) for r in references[k]] for k in ids]
    notes = []
    missing = sum(k not in predictions for k in ids)
    if missing:
        notes.append(f"{missing} of {len(ids)} ids had no prediction and were scored as empty captions")
    if meteor:
        meteor_score, why = _meteor(cands, refs, meteor_timeout_s)
    else:
        meteor_score, why = None, "METEOR skipped: disabled"
    if why:
        notes.append(why)
    return {
        "CIDEr": cider_d(cands, refs),
        "BLEU-4": bleu(cands, refs),
        "ROUGE-L": rouge_l(cands, refs),
        "METEOR": meteor_score,
        "meteor_computed": meteor_score is not None,
        "n": len(ids),
        "notes": notes,
    }
