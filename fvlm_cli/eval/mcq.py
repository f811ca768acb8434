"""Multiple-choice scoring (SPEC §5): the log-likelihood of each option, and greedy generation + letter extraction.

The fast path, what `fvlm bench` runs, for a batch of questions:
  1. DINO runs once over every real frame (`encode_frames`); its per-layer K/V serve every query of every mode.
  2. Per mode, the visual tokens and the prompt (system + question with lettered options +
     `<|im_start|>assistant\\n`) run once on an `LLMStream`: one packed step for coarse_only / coarse_fine (as in
     `generate_ids`), the frame-by-frame loop for autoregressive (`_autoregressive` returns the open stream).
  3. loglik: the prefix KV cache is replicated once per option (the options of all questions side by side) and
     every continuation is scored in one batched LLM step. The first continuation token is predicted from the
     prefix's last hidden state, exactly as `forward` predicts the first answer token.
  4. generate: greedy decoding continues on the same prefix cache (the prefix is not re-run, DINO not re-encoded;
     equal to `generate_ids` at temperature 0), then `answer_letter` reads the chosen option.
So per question: DINO once, one prefix per mode, one option step per mode — against a full forward (DINO
included) for every option x mode on the naive path (SPEC §10: the 2.7 h benchmark suite).

What is scored. The continuation of an option is its answer followed by `<|im_end|>` (`encode_mcq_options`),
the same target tokens training puts the loss on. Including `<|im_end|>` separates the complete answer "A" from
"A" as the first word of a sentence. Score = mean NLL over the continuation tokens (lowest wins); the summed NLL
is kept too. `answer_format`:
  "letter" (default): the continuation is the option's letter "A", "B", ... Every fvlm MCQ shard lists lettered
            options and asks "Answer with the option's letter" (SPEC §3.2), so the letter is the answer the prompt
            asks for: lm-eval-harness scores MMLU-style lettered prompts this way.
  "text":   the continuation is the option's own text (ARC/HellaSwag-style loglik, where the prompt does not
            letter the choices); the mean NLL keeps long options from being penalised for their length.

The naive path (`score_naive`) runs `model(frames, prompt + option, loss on the option, mode=m)` for every
option x mode: the reference for the tests and for benchmarks/bench_eval.py, never used by `fvlm bench`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fvlm_cli.eval.letters import answer_letter, index as letter_index, letter as option_letter
from fvlm_cli.model.vlm import MODES, LLMStream

METHODS = ("loglik", "generate")
ANSWER_FORMATS = ("letter", "text")


@dataclass
class Question:
    """One multiple-choice question. frames: [T, S, S, 3] uint8 (T = 0 for text-only; images already replicated)."""

    id: str
    messages: list[dict]          # the prompt turns (the stored assistant answer removed)
    options: list[str]
    answer: str                   # the correct letter
    frames: np.ndarray
    category: str = "uncategorized"
    cluster: Optional[str] = None


@dataclass
class Batch:
    """Questions encoded and padded together (the layout of `generate_ids`)."""

    frames: torch.Tensor          # [B, T, 3, S, S]
    frame_mask: torch.Tensor      # [B, T] bool
    input_ids: torch.Tensor       # [B, S] right-padded prompts ending with `<|im_start|>assistant\n`
    attention_mask: torch.Tensor  # [B, S]
    visual_pos: torch.Tensor      # [B]
    continuations: list[list[list[int]]] = field(default_factory=list)  # [B][K_b] option ids (+ <|im_end|>)

    def to(self, device) -> "Batch":
        return Batch(self.frames.to(device), self.frame_mask.to(device), self.input_ids.to(device),
                     self.attention_mask.to(device), self.visual_pos.to(device), self.continuations)


def encode_batch(questions: Sequence[Question], tokenizer: Any, *, system_prompt: str, order: str = "video_first",
                 answer_format: str = "letter") -> Batch:
    """Tokenise prompts and option continuations, pad frames and text."""
    from fvlm_cli.data.chat import encode_mcq_options

    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
    prompts, conts = [], []
    for q in questions:
        answers = [option_letter(k) for k in range(len(q.options))] if answer_format == "letter" else q.options
        prompt, cont = encode_mcq_options(q.messages, answers, tokenizer, system_prompt=system_prompt, order=order)
        prompts.append(prompt)
        conts.append(cont)
    return _pad(prompts, [q.frames for q in questions], tokenizer, conts)


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


# ---------------------------------------------------------------- the fast path

def prefix(model, cache, flat_idx, text_emb: torch.Tensor, frame_mask: torch.Tensor, attention_mask: torch.Tensor,
           visual_pos: torch.Tensor, mode: str) -> tuple[LLMStream, torch.Tensor]:
    """The visual + prompt prefix of one mode on an open stream, from DINO's cache (no re-encoding).

    Returns (stream, h_last [B, D]): h_last is the hidden state of each prompt's last token; it predicts the
    first answer token.
    """
    B = frame_mask.shape[0]
    layout, hidden, stream = model.prefill(text_emb, None, frame_mask, attention_mask, visual_pos, mode,
                                           cache=cache, flat_idx=flat_idx)
    last = layout.valid.long().sum(1) - 1
    return stream, hidden[torch.arange(B, device=hidden.device), last]


def select_cache(cache, index: torch.Tensor):
    """A new KV cache whose row i is row `index[i]` of `cache` (repeats allowed); `cache` itself is left as it was,
    so its prefix can still be decoded. The tensors are gathered (copied) once; later steps grow the copy only."""
    new = copy.copy(cache)
    if hasattr(cache, "layers"):  # transformers >= 4.56: a list of per-layer objects
        new.layers = [copy.copy(layer) for layer in cache.layers]
    elif hasattr(cache, "key_cache"):  # older DynamicCache: lists of per-layer tensors
        new.key_cache, new.value_cache = list(cache.key_cache), list(cache.value_cache)
    else:
        raise TypeError(f"cannot replicate a {type(cache).__name__} KV cache")
    new.batch_select_indices(index)
    return new


def fork_stream(stream: LLMStream, index: torch.Tensor) -> LLMStream:
    """A stream whose row i continues row `index[i]` of `stream` (KV cache, valid positions and next position)."""
    out = LLMStream(stream.llm, len(index), stream.kv_valid.device)
    out.cache = select_cache(stream.cache, index)
    out.kv_valid = stream.kv_valid[index]
    out.next_pos = stream.next_pos[index]
    return out


def score_continuations(model, stream: LLMStream, h_last: torch.Tensor, continuations: list[list[list[int]]],
                        pad_id: int = 0) -> tuple[list[list[float]], list[list[int]]]:
    """Summed NLL and token count of every continuation after its prompt's prefix, all in one LLM step.

    continuations: [B][K_b] token ids. Returns (sum_nll [B][K_b], n_tokens [B][K_b]).
    """
    dev = h_last.device
    owners = [b for b, conts in enumerate(continuations) for _ in conts]
    flat = [c for conts in continuations for c in conts]
    if not flat:
        return [[] for _ in continuations], [[] for _ in continuations]
    N, L = len(flat), max(len(c) for c in flat)
    ids = torch.full((N, L), pad_id, dtype=torch.long, device=dev)
    valid = torch.zeros(N, L, dtype=torch.bool, device=dev)
    for i, c in enumerate(flat):
        ids[i, : len(c)] = torch.tensor(c, dtype=torch.long, device=dev)
        valid[i, : len(c)] = True
    index = torch.tensor(owners, dtype=torch.long, device=dev)
    pred = [h_last[index][:, None]]  # token 0 is predicted by the prompt's last position
    if L > 1:  # token j by continuation token j-1; the last token's output predicts nothing, so it is not fed
        pred.append(fork_stream(stream, index).step(model.embed_text(ids[:, : L - 1]), valid[:, : L - 1]))
    pred = torch.cat(pred, dim=1)  # [N, L, D]
    nll = F.cross_entropy(model.llm.lm_head(pred[valid]).float(), ids[valid], reduction="none")
    per = torch.zeros(N, L, device=dev, dtype=nll.dtype).masked_scatter(valid, nll).sum(1).tolist()
    counts = valid.sum(1).tolist()
    out_nll, out_n, i = [], [], 0
    for conts in continuations:
        out_nll.append(per[i : i + len(conts)])
        out_n.append(counts[i : i + len(conts)])
        i += len(conts)
    return out_nll, out_n


def greedy(model, stream: LLMStream, h_last: torch.Tensor, max_new_tokens: int,
           stops: tuple[int, ...] = ()) -> list[list[int]]:
    """Greedy decoding on an open prefix stream (`generate_ids` at temperature 0, without re-running the prefix)."""
    B, dev = h_last.shape[0], h_last.device
    out: list[list[int]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    stop_t = torch.tensor(list(stops) or [-1], device=dev)
    h = h_last
    for step in range(max_new_tokens):
        nxt = model.llm.lm_head(h).float().argmax(-1)
        for b in range(B):
            if not done[b]:
                out[b].append(int(nxt[b]))
        done = done | torch.isin(nxt, stop_t)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        h = stream.step(model.embed_text(nxt[:, None]), (~done)[:, None])[:, 0]
    return out


@torch.no_grad()
def score_fast(model, batch: Batch, modes: Sequence[str] = MODES, *, loglik: bool = True, max_new_tokens: int = 0,
               stops: tuple[int, ...] = (), pad_id: int = 0, timings: Optional[dict] = None) -> dict:
    """The fast path (module docstring) for every mode.

    Returns {mode: {"sum_nll": [B][K_b], "n_tokens": [B][K_b] (loglik), "generated": [B][ids] (max_new_tokens > 0)}}.
    `timings` (optional) receives seconds: "dino", and per mode "prefix/<mode>", "loglik/<mode>", "generate/<mode>".
    """
    for m in modes:
        if m not in MODES:
            raise ValueError(f"unknown mode {m!r}; expected one of {', '.join(MODES)}")
    t = timings if timings is not None else {}
    clock = _Clock(batch.frames.device)
    fm = batch.frame_mask.bool()
    cache, flat_idx = model.encode_frames(batch.frames, fm)
    text_emb = model.embed_text(batch.input_ids)
    t["dino"] = clock.lap()
    out = {}
    for mode in modes:
        stream, h_last = prefix(model, cache, flat_idx, text_emb, fm, batch.attention_mask, batch.visual_pos, mode)
        t[f"prefix/{mode}"] = clock.lap()
        res: dict = {}
        if loglik:
            res["sum_nll"], res["n_tokens"] = score_continuations(model, stream, h_last, batch.continuations, pad_id)
            t[f"loglik/{mode}"] = clock.lap()
        if max_new_tokens > 0:  # after loglik: the options ran on a copy of the prefix cache
            res["generated"] = greedy(model, stream, h_last, max_new_tokens, stops)
            t[f"generate/{mode}"] = clock.lap()
        out[mode] = res
    return out


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
                    methods: Sequence[str] = METHODS, order: Optional[str] = None, answer_format: str = "letter",
                    max_new_tokens: int = 8, extra_seconds: float = 0.0) -> list[dict]:
    """Score one batch of questions in every mode x method (fast path). One row per question x mode x method:

        {"id", "mode", "method", "prediction" (letter or None), "truth", "correct", "seconds",
         loglik: "mean_nll", "sum_nll", "n_tokens" (per option);  generate: "generated" (text)}

    `seconds` is the wall time attributed to that row: shared work (DINO, `extra_seconds` such as frame
    decoding) split evenly over modes x methods, each mode's prefix split over its methods, and the batch's
    time split evenly over its questions; summed over rows it is the whole time spent.
    """
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method {bad[0]!r}; expected one of {', '.join(METHODS)}")
    if not questions:
        return []
    model, tok = lm.model, lm.tokenizer
    t0 = time.perf_counter()
    batch = encode_batch(questions, tok, system_prompt=lm.chat.system_prompt, order=order or lm.chat.order,
                         answer_format=answer_format).to(model.device)
    t_encode = time.perf_counter() - t0
    stops = stop_ids(tok)
    timings: dict = {}
    res = score_fast(model, batch, modes, loglik="loglik" in methods,
                     max_new_tokens=max_new_tokens if "generate" in methods else 0, stops=stops,
                     pad_id=_pad_id(tok), timings=timings)
    B, n_pairs = len(questions), len(modes) * len(methods)
    shared = (timings["dino"] + t_encode + extra_seconds) / n_pairs
    rows = []
    for mode in modes:
        for method in methods:
            secs = (shared + timings[f"prefix/{mode}"] / len(methods) + timings[f"{method}/{mode}"]) / B
            for b, q in enumerate(questions):
                row: dict = {"id": q.id, "mode": mode, "method": method}
                if method == "loglik":
                    s, n = res[mode]["sum_nll"][b], res[mode]["n_tokens"][b]
                    mean = [x / max(k, 1) for x, k in zip(s, n)]
                    pred = option_letter(int(np.argmin(mean)))
                    row.update(mean_nll=mean, sum_nll=s, n_tokens=n)
                else:
                    ids = [i for i in res[mode]["generated"][b] if i not in stops]
                    text = tok.decode(ids, skip_special_tokens=True).strip()
                    pred = answer_letter(text, q.options)
                    row["generated"] = text
                truth = q.answer.strip().upper()
                row.update(prediction=pred, truth=truth, correct=pred == truth, seconds=secs)
                rows.append(row)
    return rows


def predicted_text(row: dict, options: Sequence[str]) -> str:
    """The option text a row chose (for yes/no benchmarks); the generated text when no letter was read."""
    if row.get("prediction"):
        k = letter_index(row["prediction"])
        if k < len(options):
            return options[k]
    return row.get("generated") or ""


class _Clock:
    """Lap timer that waits for queued GPU work, so each lap is the time of the work it names."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.last = time.perf_counter()

    def lap(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        out, self.last = now - self.last, now
        return out
