"""Multiple-choice questions in, scored rows out (SPEC §5, §5.1): this module builds each protocol's prompts and
continuations and reads the scores; the model computes them (`fvlm_cli.model.scoring`: DINO once per question
for all options, modes and methods, one prefix per mode, every option from a fork of the prefix's KV cache).

Protocols (`protocol=`):
  fvlm       the default. Prompt = the stored conversation (the model's system prompt, question with lettered
             options) + `<|im_start|>assistant\\n`. loglik: the continuation of an option is its answer followed
             by `<|im_end|>` (`encode_mcq_options`), the tokens training puts the loss on; score = mean NLL over
             them (lowest wins), the summed NLL is kept too. `answer_format`:
               "letter" (default): the continuation is the option's letter "A", "B", ... (every fvlm MCQ shard
                        asks for the letter; lm-eval-harness scores MMLU-style lettered prompts this way);
               "text":  the option's own text (ARC/HellaSwag style; the mean keeps long options fair).
             generate: greedy decoding on the same prefix, then `answer_letter` reads the chosen option.
  reference  the original research code's loglik rules, quirks included (eval/reference.py); loglik only.
  lmms-eval  lmms-eval's prompts, generation lengths and answer extraction (eval/lmms_eval.py); generate only.

The naive path (`score_naive`) runs `model(frames, prompt + option, loss on the option, mode=m)` for every
option x mode: the check for the tests and benchmarks/bench_eval.py, never used by `fvlm bench`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from fvlm_cli.eval import lmms_eval, reference
from fvlm_cli.eval.letters import answer_letter, index as letter_index, letter as option_letter
from fvlm_cli.model.scoring import PromptBatch, score_prefix_batch
from fvlm_cli.model.vlm import MODES

METHODS = ("loglik", "generate")
ANSWER_FORMATS = ("letter", "text")
PROTOCOLS = ("fvlm", "reference", "lmms-eval")
PROTOCOL_METHODS = {"fvlm": METHODS, "reference": ("loglik",), "lmms-eval": ("generate",)}

Batch = PromptBatch  # the padded prompts + continuations of a batch of questions


@dataclass
class Question:
    """One multiple-choice question. frames: [T, S, S, 3] uint8 as stored (T = 0 for text-only); an image (one
    frame) is replicated by the protocol's frame policy when encoded."""

    id: str
    messages: list[dict]          # the prompt turns (the stored assistant answer removed)
    options: list[str]
    answer: str                   # the correct letter
    frames: np.ndarray
    category: str = "uncategorized"
    cluster: Optional[str] = None
    is_image: bool = False
    question: str = ""            # the bare question (record["question"]): lmms-eval builds its own prompt
    bench: str = ""
    doc_question: str = ""        # the dataset's own question field where lmms-eval reads it whole (MLVU_dev)


def frame_policy(protocol: str, image_frames: int) -> str:
    """How a protocol feeds frames (recorded in every result row)."""
    if protocol == "reference":
        return f"stored video frames; images replicated to {reference.IMAGE_FRAMES}"
    if protocol == "lmms-eval":
        return lmms_eval.FRAME_POLICY.replace("image_frames", str(image_frames))
    return f"stored video frames; images replicated to {image_frames}"


def _clip(q: Question, image_frames: int) -> np.ndarray:
    from fvlm_cli.data.media import replicate

    return replicate(q.frames, image_frames) if q.is_image else q.frames


def encode_batch(questions: Sequence[Question], tokenizer: Any, *, system_prompt: str, order: str = "video_first",
                 answer_format: str = "letter", image_frames: int = 8) -> Batch:
    """The fvlm protocol: tokenise prompts and option continuations, pad frames and text."""
    from fvlm_cli.data.chat import encode_mcq_options

    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
    prompts, conts = [], []
    for q in questions:
        answers = [option_letter(k) for k in range(len(q.options))] if answer_format == "letter" else q.options
        prompt, cont = encode_mcq_options(q.messages, answers, tokenizer, system_prompt=system_prompt, order=order)
        prompts.append(prompt)
        conts.append(cont)
    return _pad(prompts, [_clip(q, image_frames) for q in questions], tokenizer, conts)


def encode_reference(questions: Sequence[Question], tokenizer: Any, *,
                     order: str = "video_first") -> tuple[Batch, list[reference.Encoded], list[int]]:
    """The reference protocol: (batch, per-question encodings, per-question shared-prefix length).

    The prefix run once per question is the part every option's rendered sequence shares (normally the whole
    prompt); each option continues with the rest of its own rendered tokens, so the tokens are exactly those of
    the full per-option conversation."""
    from fvlm_cli.data.chat import Encoded

    prompts, conts, encs, shared = [], [], [], []
    for q in questions:
        enc = reference.encode(reference.user_text(q.messages), tokenizer, order=order)
        p = reference.shared_prefix(enc)
        if enc.full and p <= enc.visual_pos:  # the frames must sit inside the shared prefix
            raise ValueError(f"question {q.id}: options' token sequences differ before the visual position")
        base = enc.full[0][:p] if enc.full else enc.prompt
        prompts.append(Encoded(base, [0] * len(base), enc.visual_pos))
        conts.append([f[p:] for f in enc.full])
        encs.append(enc)
        shared.append(p)
    return _pad(prompts, [_clip(q, reference.IMAGE_FRAMES) for q in questions], tokenizer, conts), encs, shared


def encode_prompts(messages: Sequence[list[dict]], frames: Sequence[np.ndarray], tokenizer: Any, *,
                   system_prompt: str, order: str = "video_first") -> Batch:
    """Generation prompts (no options): one conversation and one clip [T, S, S, 3] uint8 per sample."""
    from fvlm_cli.data.chat import encode_prompt

    prompts = [encode_prompt(m, tokenizer, system_prompt=system_prompt, order=order) for m in messages]
    return _pad(prompts, frames, tokenizer, [[] for _ in prompts])


def _pad(prompts, clips_uint8, tokenizer, continuations) -> Batch:
    from fvlm_cli.data.media import frames_to_tensor
    from fvlm_cli.model.generate import pad_frames, pad_text

    clips = [frames_to_tensor(f) for f in clips_uint8]
    frames, frame_mask, _ = pad_frames(clips)
    if frames.shape[1] == 0:  # all text-only: one padded frame slot, since the model reshapes B*T queries
        frames, frame_mask = frames.new_zeros(len(clips), 1, *frames.shape[2:]), frame_mask.new_zeros(len(clips), 1)
    ids, am, vp = pad_text([p.input_ids for p in prompts], [p.visual_pos for p in prompts], _pad_id(tokenizer))
    return Batch(frames, frame_mask, ids, am, vp, continuations)


def _pad_id(tokenizer) -> int:
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else 0


def stop_ids(tokenizer) -> tuple[int, ...]:
    """`<|im_end|>` and eos: where generation stops."""
    ids = {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id}
    return tuple(sorted(i for i in ids if i is not None and i >= 0))


def score_fast(model, batch: Batch, modes: Sequence[str] = MODES, *, loglik: bool = True, max_new_tokens: int = 0,
               stops: tuple[int, ...] = (), pad_id: int = 0, timings: Optional[dict] = None) -> dict:
    """The fast path with the fvlm reduction: {mode: {"sum_nll": [B][K_b], "n_tokens": [B][K_b] (loglik),
    "generated": [B][ids] (max_new_tokens > 0)}} (timings: `score_prefix_batch`)."""
    res = score_prefix_batch(model, batch, modes, loglik=loglik, max_new_tokens=max_new_tokens, stops=stops,
                             pad_id=pad_id, timings=timings)
    for r in res.values():
        if "nll" in r:
            nll = r.pop("nll")
            r["sum_nll"] = [[sum(c) for c in q] for q in nll]
            r["n_tokens"] = [[len(c) for c in q] for q in nll]
    return res


# ---------------------------------------------------------------- the naive path (reference)

@torch.no_grad()
def score_naive(model, batch: Batch, modes: Sequence[str] = MODES) -> dict:
    """Every option x mode as its own full forward (DINO re-encoded each time): {mode: {"sum_nll", "n_tokens"}}."""
    out = {m: {"sum_nll": [], "n_tokens": []} for m in modes}
    dev = batch.input_ids.device
    for b, conts in enumerate(batch.continuations):
        T, n = int(batch.frame_mask[b].sum()), int(batch.attention_mask[b].sum())
        prompt = batch.input_ids[b, :n].tolist()
        # a text-only question keeps one padded frame slot: forward reshapes B*T queries, which fails for T = 0
        frames, frame_mask = batch.frames[b : b + 1, : max(T, 1)], batch.frame_mask[b : b + 1, : max(T, 1)]
        for mode in modes:
            nll, cnt = [], []
            for c in conts:
                ids = torch.tensor([prompt + list(c)], device=dev)
                loss_mask = torch.tensor([[0] * n + [1] * len(c)], device=dev)
                r = model(frames, ids, loss_mask=loss_mask, frame_mask=frame_mask, visual_pos=batch.visual_pos[b : b + 1], mode=mode,
                          return_logits=False)
                nll.append(-float(r["logps"][0]))
                cnt.append(int(r["n_targets"][0]))
            out[mode]["sum_nll"].append(nll)
            out[mode]["n_tokens"].append(cnt)
    return out


# ---------------------------------------------------------------- questions in, scored rows out

def score_questions(lm, questions: Sequence[Question], *, modes: Sequence[str] = MODES,
                    methods: Sequence[str] = METHODS, protocol: str = "fvlm", order: Optional[str] = None,
                    answer_format: str = "letter", max_new_tokens: int = 8, extra_seconds: float = 0.0) -> list[dict]:
    """Score one batch of questions in every mode x method under `protocol`. One row per question x mode x method:

        {"id", "mode", "method", "protocol", "prediction" (letter or None), "truth", "correct", "seconds",
         fvlm loglik: "mean_nll", "sum_nll", "n_tokens" (per option);  reference: "scores", "scored_options";
         generate: "generated" (text)}

    `seconds` is the wall time attributed to that row: shared work (DINO, `extra_seconds` such as frame
    decoding) split evenly over modes x methods, each mode's prefix split over its methods, and the batch's
    time split evenly over its questions; summed over rows it is the whole time spent.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    bad = [m for m in methods if m not in PROTOCOL_METHODS[protocol]]
    if bad:
        raise ValueError(f"method {bad[0]!r} is not part of the {protocol} protocol "
                         f"({', '.join(PROTOCOL_METHODS[protocol])})")
    if not questions:
        return []
    model, tok = lm.model, lm.tokenizer
    order = order or lm.chat.order
    t0 = time.perf_counter()
    stops = stop_ids(tok)
    encs: list = []
    if protocol == "fvlm":
        batch = encode_batch(questions, tok, system_prompt=lm.chat.system_prompt, order=order,
                             answer_format=answer_format, image_frames=lm.media.image_frames)
        gen_tokens = max_new_tokens
    elif protocol == "reference":
        batch, encs, shared = encode_reference(questions, tok)  # rule 6: frames first, always
        gen_tokens = 0
    else:
        benches = {q.bench for q in questions}
        if len(benches) != 1:
            raise ValueError(f"lmms-eval scores one benchmark per batch, got {sorted(benches)}")
        bench = benches.pop()
        msgs = [[{"role": "user", "content": lmms_eval.prompt(bench, q.question, q.options, q.doc_question)}] for q in questions]
        batch = encode_prompts(msgs, [_clip(q, lm.media.image_frames) for q in questions], tok,
                               system_prompt=lm.chat.system_prompt, order=order)
        gen_tokens = lmms_eval.MAX_NEW_TOKENS[bench]
    batch = batch.to(model.device)
    t_encode = time.perf_counter() - t0
    timings: dict = {}
    res = score_prefix_batch(model, batch, modes, loglik="loglik" in methods,
                             max_new_tokens=gen_tokens if "generate" in methods else 0, stops=stops,
                             pad_id=_pad_id(tok), timings=timings)
    B, n_pairs = len(questions), len(modes) * len(methods)
    shared_secs = (timings["dino"] + t_encode + extra_seconds) / n_pairs
    ignore = reference.ignore_index(tok)
    rows = []
    for mode in modes:
        for method in methods:
            secs = (shared_secs + timings[f"prefix/{mode}"] / len(methods) + timings[f"{method}/{mode}"]) / B
            for b, q in enumerate(questions):
                row: dict = {"id": q.id, "mode": mode, "method": method, "protocol": protocol}
                truth = q.answer.strip().upper()
                if method == "loglik" and protocol == "reference":
                    enc, skip = encs[b], encs[b].prompt_len - shared[b]
                    scores = [reference.score(nll[skip:], full[enc.prompt_len:], ignore)
                              for nll, full in zip(res[mode]["nll"][b], enc.full)]
                    pred = reference.pick(scores, enc.letters)
                    row.update(scores=scores, scored_options=enc.options)
                    ok = pred == truth
                elif method == "loglik":
                    s = [sum(c) for c in res[mode]["nll"][b]]
                    n = [len(c) for c in res[mode]["nll"][b]]
                    mean = [x / max(k, 1) for x, k in zip(s, n)]
                    pred = option_letter(int(np.argmin(mean)))
                    row.update(mean_nll=mean, sum_nll=s, n_tokens=n)
                    ok = pred == truth
                else:
                    ids = [i for i in res[mode]["generated"][b] if i not in stops]
                    text = tok.decode(ids, skip_special_tokens=True)
                    if protocol == "lmms-eval":
                        pred = lmms_eval.read_answer(q.bench, text, len(q.options))
                        ok = lmms_eval.correct(q.bench, text, truth, len(q.options))
                    else:
                        text = text.strip()
                        pred = answer_letter(text, q.options)
                        ok = pred == truth
                    row["generated"] = text
                row.update(prediction=pred, truth=truth, correct=bool(ok), seconds=secs)
                rows.append(row)
    return rows


def predicted_text(row: dict, options: Sequence[str]) -> str:
    """The option text a row chose (for yes/no benchmarks); the generated text when no letter was read."""
    if row.get("prediction"):
        k = letter_index(row["prediction"])
        if k < len(options):
            return options[k]
    return row.get("generated") or ""
