"""The OpenAI chat-completions shapes fvlm speaks, and every reason a request is refused (4xx JSON).

A request is the OpenAI one: `messages` (system / user / assistant; user content a string or parts
`{"type": "text"}`, `{"type": "image_url", "image_url": {"url"}}`, `{"type": "video_url", "video_url": {"url"}}`,
and the Responses-style `{"type": "input_text", "text"}` / `{"type": "input_image", "image_url": "<url>"}` that
vLLM takes too; text parts are joined by newlines), `max_tokens` (or `max_completion_tokens`), `temperature`,
`top_p`, `seed`, `stop` (a string or up to 4), `stream` with `stream_options.include_usage`, plus the fvlm extra
fields `mode` (coarse_only | coarse_fine | autoregressive) and `order`. Exactly one image or video per request.
What fvlm cannot honour is refused rather than ignored: `n` > 1, `logprobs`, `tools`, a non-text
`response_format`. Errors follow OpenAI's body: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

MODES = ("coarse_only", "coarse_fine", "autoregressive")
MEDIA_PARTS = {"image_url": "image", "video_url": "video", "input_image": "image"}
TEXT_PARTS = ("text", "input_text")
MAX_STOPS = 4  # as OpenAI


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = {400: "invalid_request_error", 404: "not_found_error", 413: "request_too_large",
                422: "invalid_request_error", 503: "server_overloaded"}.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    messages: list[dict]          # text-only conversation ({"role", "content": str}), ends with a user turn
    media_url: str                # the one image/video of the request
    media_kind: str               # image | video (what the part said; the decoder checks the bytes)
    mode: str = "autoregressive"
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: Optional[int] = None
    order: Optional[str] = None
    stream: bool = False
    include_usage: bool = False   # stream_options.include_usage: a last chunk with usage and no choices
    stop: tuple = ()              # strings that end the completion (not included in it)
    model: str = ""
    extra: dict = field(default_factory=dict)


def _number(body: dict, key: str, lo: float, hi: float, default, cast=float):
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (cast is int and int(value) != value):
        raise ApiError(400, f"'{key}' must be a{'n integer' if cast is int else ' number'}, got {value!r}", key)
    if not lo <= value <= hi:
        raise ApiError(400, f"'{key}' must be between {lo:g} and {hi:g}, got {value!r}", key)
    return cast(value)


def parse_chat(body: Any, *, max_tokens_limit: int, default_max_tokens: int) -> ChatRequest:
    """Check a decoded JSON body; ApiError(400) names the first problem."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", "messages")
    mode = body.get("mode") or "autoregressive"
    if mode not in MODES:
        raise ApiError(400, f"unknown mode {mode!r}; use one of {', '.join(MODES)}", "mode")
    order = body.get("order")
    if order not in (None, "video_first", "question_first"):
        raise ApiError(400, f"unknown order {order!r}; use video_first or question_first", "order")
    if body.get("n") not in (None, 1):
        raise ApiError(400, "only n=1 is supported", "n")
    _refuse_unsupported(body)
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, key, 1, 1 << 31, min(default_max_tokens, max_tokens_limit), int)
    if max_tokens > max_tokens_limit:
        raise ApiError(400, f"'{key}' is {max_tokens}; this server allows at most {max_tokens_limit} "
                            f"(fvlm serve --max-tokens)", key, "max_tokens_exceeded")
    conv, media = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer"):
            raise ApiError(400, f"messages[{i}] needs a role of system, user or assistant", f"messages[{i}]")
        role = "system" if m["role"] == "developer" else m["role"]
        content = m.get("content")
        if isinstance(content, str) or content is None:
            text = content or ""
        elif isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                where = f"messages[{i}].content[{j}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in TEXT_PARTS:
                    parts.append(str(part.get("text", "")))
                elif kind in MEDIA_PARTS:
                    ref = part.get(kind) if kind != "input_image" else part.get("image_url", part.get(kind))
                    url = ref.get("url") if isinstance(ref, dict) else ref
                    if not isinstance(url, str) or not url:
                        raise ApiError(400, f"{where}: {kind} needs a url", where)
                    media.append((url, MEDIA_PARTS[kind]))
                else:
                    raise ApiError(400, f"{where}: unsupported content part type {kind!r} "
                                        f"(use text, image_url or video_url)", where)
            text = "\n".join(p for p in parts if p)
        else:
            raise ApiError(400, f"messages[{i}].content must be a string or a list of parts", f"messages[{i}]")
        conv.append({"role": role, "content": text})
    if not media:
        raise ApiError(400, "no image or video in the request: add an image_url or video_url content part "
                            "(http(s) URL or data: URI)", "messages", "media_required")
    if len(media) > 1:
        raise ApiError(400, f"{len(media)} images/videos in the request; fvlm reads one per request", "messages")
    if conv[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's", "messages")
    return ChatRequest(conv, media[0][0], media[0][1], mode=mode, max_tokens=max_tokens,
                       temperature=_number(body, "temperature", 0.0, 2.0, 0.0),
                       top_p=_number(body, "top_p", 1e-6, 1.0, 1.0),
                       seed=_number(body, "seed", -(1 << 63), (1 << 63) - 1, None, int), order=order,
                       stream=bool(body.get("stream", False)), include_usage=_include_usage(body),
                       stop=_stops(body), model=str(body.get("model") or ""))


def _refuse_unsupported(body: dict) -> None:
    """Fields whose meaning fvlm cannot deliver: a 400 naming them, never a silently different answer."""
    if body.get("logprobs") or body.get("top_logprobs"):
        raise ApiError(400, "logprobs are not supported by fvlm serve", "logprobs")
    if body.get("tools") and body.get("tool_choice", "auto") != "none" or body.get("functions"):
        raise ApiError(400, "tool calling is not supported by fvlm serve", "tools")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type", "text") != "text"):
        raise ApiError(400, "only response_format {'type': 'text'} is supported (no JSON mode)", "response_format")


def _stops(body: dict) -> tuple:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(x, str) for x in stops) or len(stops) > MAX_STOPS:
        raise ApiError(400, f"'stop' must be a string or a list of at most {MAX_STOPS} strings", "stop")
    return tuple(x for x in stops if x)


def _include_usage(body: dict) -> bool:
    opts = body.get("stream_options")
    if opts is None:
        return False
    if not isinstance(opts, dict):
        raise ApiError(400, "'stream_options' must be an object", "stream_options")
    if not body.get("stream"):
        raise ApiError(400, "'stream_options' is only allowed with stream=true", "stream_options")
    return bool(opts.get("include_usage"))


def cut_at_stop(text: str, stops: tuple) -> tuple[str, bool]:
    """`text` up to (not including) the earliest stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def stop_holdback(text: str, stops: tuple) -> int:
    """How many trailing characters of streamed `text` could still begin a stop string (kept back for now)."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def finished(gen, req: ChatRequest) -> tuple[str, str]:
    """(the completion's text, finish_reason): cut at the first stop string, which ends it as `stop`."""
    text, hit = cut_at_stop(gen.text, req.stop)
    return text, "stop" if hit else gen.extra.get("finish_reason", "stop")


def usage(gen) -> dict:
    n_out, n_in = len(gen.token_ids), int(gen.extra.get("prompt_tokens", 0))
    return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}


def fvlm_stats(gen, req: ChatRequest) -> dict:
    """The response's extra `fvlm` field: the mode, frames read and timings."""
    return {"mode": req.mode, "frames": gen.frames, "seconds": round(gen.seconds, 4),
            "first_token_s": round(gen.first_token_s, 4)}


def completion(cid: str, model: str, gen, req: ChatRequest) -> dict:
    """The non-streaming response body for one Generation."""
    text, reason = finished(gen, req)
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": reason, "logprobs": None}],
            "usage": usage(gen), "fvlm": fvlm_stats(gen, req)}


def chunk(cid: str, model: str, created: int, delta: Optional[dict], finish: Optional[str] = None,
          extra: Optional[dict] = None) -> dict:
    """One server-sent event of a streamed completion (OpenAI's chat.completion.chunk); `delta` None: the usage
    chunk, which has no choices."""
    body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish,
                                                  "logprobs": None}]}
    if extra:
        body.update(extra)
    return body
