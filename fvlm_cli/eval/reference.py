"""`--protocol reference`: the original research code's MCQ scoring, rule for rule (SPEC §5.1).

This is the protocol of the released fVLM-135M's published table. The point is bit-for-bit comparability,
not elegance, so its quirks are kept:

1. Options are parsed out of the stored user text (the question with its lettered options) with
       re.finditer(r'([A-Z])\\.\\s*(.+?)(?=\\n[A-Z]\\.|$)', user_text, re.DOTALL)
   into a dict {letter: letter + ". " + text.strip()}, so a repeated letter keeps its LAST text; letters sorted.
   Quirks: a trailing instruction line ("Answer with the option's letter ...") joins the last option's
   text; "U.S." in a question yields a spurious option "S. ..."; the stored `options` list is not used.
2. Per option the conversation [system "You are a helpful AI assistant.", user = the stored user text,
   assistant = the option] is rendered with the tokenizer's chat template without a generation prompt and
   tokenised with the tokenizer's defaults. The prompt is the same conversation without the assistant turn,
   rendered with the generation prompt (system + user + `<|im_start|>assistant\\n`).
3. Scored positions: every token after the prompt's length to the end of the rendered sequence: the option,
   `<|im_end|>` and the template's trailing "\\n".
4. Per-token cross-entropy with ignore_index = the tokenizer's pad id. In SmolLM2 pad is `<|im_end|>`, so that
   token adds 0 to the sum but still counts in the denominator: score = sum / number of scored positions.
   (A tokenizer without a pad token ignores nothing.)
5. The lowest score wins; a tie goes to the earliest (sorted) letter.
6. A single image frame is replicated to 8 frames; videos keep their stored frames. The frames come first
   (the original forward had no question-first order), whatever order the model was trained with.

Worked example: for "A. yes" the scored tokens are `A`, `.`, ` yes`, `<|im_end|>` (adds 0) and "\\n": 4 NLLs / 5.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

SYSTEM_PROMPT = "You are a helpful AI assistant."
IMAGE_FRAMES = 8
OPTION_RE = re.compile(r"([A-Z])\.\s*(.+?)(?=\n[A-Z]\.|$)", re.DOTALL)
_NO_IGNORE = -100  # no pad token: nothing is ignored (a target id is never negative)


def parse_options(user_text: str) -> list[tuple[str, str]]:
    """[(letter, "L. text")] parsed from the user text, sorted by letter (rule 1, quirks included)."""
    found: dict[str, str] = {}
    for m in OPTION_RE.finditer(user_text):
        found[m.group(1)] = f"{m.group(1)}. {m.group(2).strip()}"  # a dict, as in the original: the last one wins
    return sorted(found.items())


def user_text(messages: Sequence[dict]) -> str:
    """The stored user turn of an MCQ sample (the first user message)."""
    for m in messages:
        if m.get("role") == "user":
            content = m.get("content")
            return content if isinstance(content, str) else str(content or "")
    return ""


def ignore_index(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else _NO_IGNORE


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text)["input_ids"])


@dataclass
class Encoded:
    """One question under the reference rules."""

    letters: list[str]                # sorted option letters (rule 1)
    options: list[str]                # "L. text"
    prompt: list[int]                 # system + user + `<|im_start|>assistant\n`
    full: list[list[int]]             # per option: the whole rendered conversation
    visual_pos: int                   # text index the frames go before

    @property
    def prompt_len(self) -> int:
        return len(self.prompt)


def encode(text: str, tokenizer: Any, *, order: str = "video_first") -> Encoded:
    """Rules 1-3 for one stored user text."""
    system = {"role": "system", "content": SYSTEM_PROMPT}
    user = {"role": "user", "content": text}
    parsed = parse_options(text)
    prompt = _ids(tokenizer, tokenizer.apply_chat_template([system, user], tokenize=False,
                                                           add_generation_prompt=True))
    full = [_ids(tokenizer, tokenizer.apply_chat_template([system, user, {"role": "assistant", "content": o}],
                                                          tokenize=False, add_generation_prompt=False))
            for _, o in parsed]
    visual_pos = 0
    if order == "question_first":  # after the user turn, as fvlm's chat encoding places it
        visual_pos = len(_ids(tokenizer, tokenizer.apply_chat_template([system, user], tokenize=False,
                                                                         add_generation_prompt=False)))
    return Encoded([lo[0] for lo in parsed], [lo[1] for lo in parsed], prompt, full, visual_pos)


def shared_prefix(enc: Encoded) -> int:
    """How many leading tokens every option's sequence shares (at most the prompt): the prefix computed once."""
    if not enc.full:
        return enc.prompt_len
    n = min(enc.prompt_len, *(len(f) for f in enc.full))
    first = enc.full[0]
    for f in enc.full[1:]:
        k = 0
        while k < n and f[k] == first[k]:
            k += 1
        n = k
    return n


def score(nll: Sequence[float], target_ids: Sequence[int], ignore: int) -> float:
    """Rule 4: sum of the NLLs of non-ignored targets / number of scored positions."""
    if not target_ids:
        return float("inf")
    return sum(x for x, t in zip(nll, target_ids) if t != ignore) / len(target_ids)


def pick(scores: Sequence[float], letters: Sequence[str]) -> Optional[str]:
    """Rule 5: the letter of the lowest score; the earliest wins a tie; None without options."""
    if not scores:
        return None
    best = min(range(len(scores)), key=lambda i: (scores[i], i))
    return letters[best]
