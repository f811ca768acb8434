"""Chat encoding and loss masks (SPEC §3.4): messages -> token ids, loss mask, visual position.

Every sequence is the SmolLM2 chat format with an explicit system message first:

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{question}<|im_end|>\\n
    <|im_start|>assistant\\n{answer}<|im_end|>\\n

It is built by tokenising each segment on its own (special tokens, role header, content, the trailing
"\\n"), never by searching a rendered string, so every mask boundary is exact. For ordinary text the ids equal
`tokenizer(apply_chat_template(...))`; where they could differ (content starting with whitespace) the segment
form is the one generation uses, since generation starts right after `<|im_start|>assistant\\n`.

Loss masks (`loss_mask[j] = 1`: token j is a prediction target):
  stage 1          every text token
  stages 2, 3, DPO the content of assistant turns AND their closing `<|im_end|>` (the released model never
                   learned to stop because that token was masked); not the role header, not the trailing "\\n".
Downstream the ignore label is IGNORE_INDEX (-100), never the pad id: pad == `<|im_end|>` in SmolLM2.

`visual_pos` is the text index before which the visual tokens go: 0 for `video_first`; for `question_first`
the index right after the system turn and the first user turn ([system + user, visual, assistant ...]).

API:
    encode_chat(messages, tok, *, stage, system_prompt, order, max_tokens) -> Encoded | None  (None: no target left)
    encode_prompt(messages, tok, *, system_prompt, order) -> Encoded        (ends with "<|im_start|>assistant\\n")
    encode_dpo(prompt_messages, chosen, rejected, tok, *, system_prompt, order, max_tokens) -> (Encoded, Encoded) | None
    encode_mcq_options(prompt_messages, answers, tok, *, system_prompt, order) -> (Encoded, [ids per answer])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from fvlm_cli.errors import DataError

IGNORE_INDEX = -100
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ORDERS = ("video_first", "question_first")


@dataclass
class Encoded:
    """One tokenised sample. Visual tokens are inserted before text index `visual_pos`."""

    input_ids: list[int]
    loss_mask: list[int]
    visual_pos: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_targets(self) -> int:
        return sum(self.loss_mask)


def special_ids(tokenizer: Any) -> tuple[int, int]:
    """(`<|im_start|>` id, `<|im_end|>` id); DataError when the tokenizer lacks the chat tokens."""
    ids = []
    for token in (IM_START, IM_END):
        i = tokenizer.convert_tokens_to_ids(token)
        unknown = tokenizer.unk_token_id is not None and i == tokenizer.unk_token_id and token != tokenizer.unk_token
        if i is None or unknown:
            raise DataError(f"tokenizer has no {token} token: fvlm needs a SmolLM2-style (ChatML) tokenizer")
        ids.append(int(i))
    return ids[0], ids[1]


def encode_chat(messages: Sequence[dict], tokenizer: Any, *, stage: int, system_prompt: str,
                order: str = "video_first", max_tokens: int = 512) -> Optional[Encoded]:
    """A training sequence for SFT stage 1, 2 or 3; None when no target token survives truncation."""
    if stage not in (1, 2, 3):
        raise ValueError(f"stage must be 1, 2 or 3, got {stage}")
    system, turns = _split_system(messages, system_prompt)
    b = _Builder(tokenizer)
    b.turn("system", system, target=False)
    _add_turns(b, turns, order, target_roles=("assistant",))
    if stage == 1:  # captioning/alignment: every text token is a target
        b.mask = [1] * len(b.ids)
    return b.finish(max_tokens)


def encode_prompt(messages: Sequence[dict], tokenizer: Any, *, system_prompt: str,
                  order: str = "video_first") -> Encoded:
    """A generation prompt: the conversation, then `<|im_start|>assistant\\n`. The loss mask is all 0."""
    system, turns = _split_system(messages, system_prompt)
    b = _Builder(tokenizer)
    b.turn("system", system, target=False)
    _add_turns(b, turns, order, target_roles=())
    b.header("assistant")
    return Encoded(b.ids, [0] * len(b.ids), b.visual_pos)


def encode_dpo(prompt_messages: Sequence[dict], chosen: str, rejected: str, tokenizer: Any, *, system_prompt: str,
               order: str = "video_first", max_tokens: int = 512) -> Optional[tuple[Encoded, Encoded]]:
    """(chosen, rejected) sequences sharing the prompt; the target is the final answer + `<|im_end|>` only.

    A trailing assistant turn in `prompt_messages` is ignored (preference data may store an answer there).
    None when either answer is fully truncated.
    """
    system, turns = _split_system(prompt_messages, system_prompt)
    while turns and turns[-1][0] == "assistant":
        turns = turns[:-1]
    out = []
    for answer in (chosen, rejected):
        b = _Builder(tokenizer)
        b.turn("system", system, target=False)
        _add_turns(b, turns, order, target_roles=())
        b.turn("assistant", _text(answer), target=True)
        enc = b.finish(max_tokens)
        if enc is None:
            return None
        out.append(enc)
    return out[0], out[1]


def encode_mcq_options(prompt_messages: Sequence[dict], answers: Sequence[str], tokenizer: Any, *,
                       system_prompt: str, order: str = "video_first") -> tuple[Encoded, list[list[int]]]:
    """The shared prompt (ending `<|im_start|>assistant\\n`) and, per answer, its continuation ids:
    answer tokens + `<|im_end|>`. Score an option by the log-likelihood of its continuation after the prompt."""
    prompt = encode_prompt(prompt_messages, tokenizer, system_prompt=system_prompt, order=order)
    _, im_end = special_ids(tokenizer)
    return prompt, [_encode(tokenizer, _text(a)) + [im_end] for a in answers]


# ---------------------------------------------------------------- internals

class _Builder:
    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self.im_start, self.im_end = special_ids(tokenizer)
        self.ids: list[int] = []
        self.mask: list[int] = []
        self.visual_pos = 0

    def _add(self, ids: list[int], target: bool) -> None:
        self.ids += ids
        self.mask += [int(target)] * len(ids)

    def header(self, role: str) -> None:
        self._add([self.im_start] + _encode(self.tok, f"{role}\n"), False)

    def turn(self, role: str, content: str, target: bool) -> None:
        self.header(role)
        self._add(_encode(self.tok, content) + [self.im_end], target)  # <|im_end|> is a target with its answer
        self._add(_encode(self.tok, "\n"), False)

    def finish(self, max_tokens: int) -> Optional[Encoded]:
        ids, mask = self.ids[:max_tokens], self.mask[:max_tokens]  # truncate from the end
        if not any(mask):
            return None
        return Encoded(ids, mask, min(self.visual_pos, len(ids)))


def _add_turns(b: _Builder, turns: list[tuple[str, str]], order: str, target_roles: tuple[str, ...]) -> None:
    """Append the non-system turns; with question_first, place the visual tokens after the first user turn
    (or right after the system turn when the conversation does not open with one)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if order == "question_first":
        b.visual_pos = len(b.ids)
    for i, (role, content) in enumerate(turns):
        b.turn(role, content, target=role in target_roles)
        if order == "question_first" and i == 0 and role == "user":
            b.visual_pos = len(b.ids)


def _split_system(messages: Sequence[dict], system_prompt: str) -> tuple[str, list[tuple[str, str]]]:
    """The system message (the sample's own leading one, else `system_prompt`) and the remaining turns."""
    turns = []
    for m in messages:
        if not isinstance(m, dict) or "role" not in m:
            raise DataError(f"malformed chat message {str(m)[:80]!r} (need a role and content)")
        turns.append((str(m["role"]), _text(m.get("content"))))
    if turns and turns[0][0] == "system":
        return turns[0][1], turns[1:]
    return system_prompt, turns


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, {"type": "image"}] style content
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def _encode(tokenizer: Any, text: str) -> list[int]:
    if not text:
        return []
    return list(tokenizer.encode(text, add_special_tokens=False))
