"""Answer letters: read the chosen option out of a generated MCQ answer.

`extract_letter` tries these rules in order and returns the first valid letter (one of the first
`n_options` letters, upper-cased); a letter outside the range is skipped, never returned:

1. **whole answer** — the text is only a letter: "B", "(B)", "b", "B.", "**C**".
2. **leading label** — the text starts with a labelled letter: "B. text", "B) text", "(b) text", "B: text".
3. **cue phrase** — a letter right after "answer" ("The answer is B", "Answer: (c)", "answer is option D"),
   else right after "option"/"choice" ("option A"). The *last* such hit wins: a model that reasons
   first states its conclusion at the end.
4. **standalone letter** — the first "(x)" or bare capital letter standing alone: "I think D because...".
   A bare "A" or "I" followed by a lower-case word ("A red circle...", "I think...") is read as an
   English word, not an option, and skipped here. A letter the text rules out is skipped too: "not C",
   "isn't (C)", "C is incorrect" ("The answer is not C, it is D" -> "D"); so is a cue-phrase letter followed
   by "is not"/"is wrong" ("option C is not right, D is" -> "D").
5. **article fallback** — only when nothing else matched: such an "A"/"I" word after all
   ("A red circle moves left." -> "A" with 4 options). `article_fallback=False` turns this off.

Lower-case "a"/"i" are only read as letters when nothing follows them but punctuation or the end of
the text, or when bracketed, since "the answer is a red circle" is prose. Markdown emphasis (`*`, `_`,
backticks) is removed first.

`answer_letter` is what a benchmark should call: rules 1–4, then `match_option_text` (the model wrote
an option's text instead of its letter), then rule 5.
"""

from __future__ import annotations

import re

__all__ = ["letter", "index", "extract_letter", "match_option_text", "answer_letter"]

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

_WHOLE = re.compile(r"^[(\[]?\s*([A-Za-z])\s*[)\]]?\s*[.:)]?$")
_LEADING = re.compile(r"^(?:[(\[]\s*([A-Za-z])\s*[)\]]|([A-Z])\s*[.:)])(?=\s|$)")
_LETTER = r"(?:[(\[]\s*(?P<bracketed>[A-Za-z])\s*[)\]]|(?P<bare>[A-Za-z])(?![A-Za-z0-9'’]))"
# Words allowed between the cue and the letter: "answer is likely option C", "answer would be: B".
_FILLER = (
    r"(?:(?:is|was|would|should|will|must|be|likely|probably|clearly|then|therefore|thus|"
    r"option|choice|letter)(?:\s*[:\-=]\s*|\s+))*"
)
_ANSWER_CUE = re.compile(r"\banswers?(?:\s*[:\-=]\s*|\s+)" + _FILLER + _LETTER, re.IGNORECASE)
_OPTION_CUE = re.compile(r"\b(?:option|choice)s?(?:\s*[:\-=]\s*|\s+)" + _FILLER + _LETTER, re.IGNORECASE)
_STANDALONE = re.compile(
    r"[(\[]\s*(?P<bracketed>[A-Za-z])\s*[)\]]|(?<![A-Za-z0-9'’])(?P<bare>[A-Z])(?![A-Za-z0-9'’])"
)
_FOLLOWED_BY_WORD = re.compile(r"\s+[A-Za-z]")
_NEGATED_BEFORE = re.compile(r"(?:\bnot|n['’]t|\bnever)\s+(?:(?:option|choice|letter)\s+)?[(\[]?\s*$", re.IGNORECASE)
_NEGATED_AFTER = re.compile(r"\s*[)\]]?\s*(?:is|was)\s+(?:not\b|incorrect|wrong|false)", re.IGNORECASE)


def letter(i: int) -> str:
    """Option letter for a 0-based index: 0 -> "A", 25 -> "Z"."""
    if not 0 <= i < len(_ALPHABET):
        raise ValueError(f"option index {i} is outside 0..25")
    return _ALPHABET[i]


def index(option_letter: str) -> int:
    """0-based index of an option letter, case-insensitive: "A" -> 0, "c" -> 2."""
    s = option_letter.strip().upper()
    if len(s) != 1 or s not in _ALPHABET:
        raise ValueError(f"not an option letter: {option_letter!r}")
    return _ALPHABET.index(s)


def _valid(ch: str, n_options: int) -> str | None:
    up = ch.upper()
    return up if up in _ALPHABET[:n_options] else None


def _word_like(text: str, m: re.Match, group: str = "bare") -> bool:
    """A bare "A"/"I" (either case) followed by a word is English, not an option label."""
    ch = m.group(group)
    return ch is not None and ch.upper() in "AI" and bool(_FOLLOWED_BY_WORD.match(text, m.end(group)))


def _ruled_out(text: str, m: re.Match) -> bool:
    """The letter `m` matched (with its brackets) is negated: "not C", "isn't (C)", "C is incorrect"."""
    return bool(_NEGATED_BEFORE.search(text, 0, m.start())) or bool(_NEGATED_AFTER.match(text, m.end()))


def _clean(text: str) -> str:
    return re.sub(r"[*_`]", "", text).strip()


def _strong_letter(text: str, n_options: int) -> str | None:
    """Rules 1-4 of the module docstring."""
    m = _WHOLE.match(text)
    if m:
        return _valid(m.group(1), n_options)
    m = _LEADING.match(text)
    if m and (hit := _valid(m.group(1) or m.group(2), n_options)):
        return hit
    for cue in (_ANSWER_CUE, _OPTION_CUE):
        hits = []
        for m in cue.finditer(text):
            bare = m.group("bare")
            # Upper-case after a cue is a label even before a word ("answer is A because");
            # lower-case a/i before a word is the article ("answer is a red circle").
            if bare is not None and bare.islower() and _word_like(text, m):
                continue
            if _NEGATED_AFTER.match(text, m.end()):  # "option C is not right" (a cue is never preceded by "not")
                continue
            if hit := _valid(m.group("bracketed") or bare, n_options):
                hits.append(hit)
        if hits:
            return hits[-1]
    for m in _STANDALONE.finditer(text):
        if _word_like(text, m) or _ruled_out(text, m):
            continue
        if hit := _valid(m.group("bracketed") or m.group("bare"), n_options):
            return hit
    return None


def _article_letter(text: str, n_options: int) -> str | None:
    """Rule 5: the first word-like capital "A"/"I" that is a valid option."""
    for m in _STANDALONE.finditer(text):
        if m.group("bare") and _word_like(text, m) and (hit := _valid(m.group("bare"), n_options)):
            return hit
    return None


def extract_letter(text: str, n_options: int = 4, *, article_fallback: bool = True) -> str | None:
    """The option letter ("A".."Z") a generated answer chose, or None (precedence: module docstring).

    Only the first `n_options` letters are valid: with 4 options, "E" is never returned.
    """
    if not 1 <= n_options <= len(_ALPHABET):
        raise ValueError(f"n_options must be in 1..26, got {n_options}")
    text = _clean(text or "")
    if not text:
        return None
    hit = _strong_letter(text, n_options)
    if hit is None and article_fallback:
        hit = _article_letter(text, n_options)
    return hit


def _normalise(s: str) -> str:
    return " ".join(re.sub(r"[^\w]+|_", " ", s.lower()).split())


_OPTION_LABEL = re.compile(r"^\s*[(\[]?[A-Za-z][)\].:]\s+")


def match_option_text(text: str, options: list[str]) -> str | None:
    """The letter of the option whose text the answer gives, or None.

    Compared after lower-casing and turning punctuation into spaces; a leading "A. "/"(B) " label on an
    option is ignored. An exact match wins; otherwise the options contained in the answer as whole
    words, minus those that are part of a longer contained option ("red" inside "red circle"); exactly
    one must remain, else the answer is ambiguous and None is returned.
    """
    answer = _normalise(text or "")
    if not answer:
        return None
    normed = [_normalise(_OPTION_LABEL.sub("", o)) for o in options]
    exact = [i for i, o in enumerate(normed) if o and o == answer]
    if len(exact) == 1:
        return letter(exact[0])
    contained = [i for i, o in enumerate(normed) if o and f" {o} " in f" {answer} "]
    maximal = [
        i for i in contained
        if not any(j != i and normed[i] != normed[j] and f" {normed[i]} " in f" {normed[j]} " for j in contained)
    ]
    return letter(maximal[0]) if len(maximal) == 1 else None


def answer_letter(text: str, options: list[str]) -> str | None:
    """The chosen letter for a generated answer to `options`: letter rules 1-4, then option text, then rule 5."""
    n = len(options)
    return (
        extract_letter(text, n, article_fallback=False)
        or match_option_text(text, options)
        or extract_letter(text, n)
    )
