"""One file -> tensors -> text: decode with the one media policy, encode the chat prompt, generate.

    lm = load_model("tiny")
    generate(lm, ["clip.mp4", "photo.png"], "What is happening?", mode="coarse_fine")   # -> [Generation, ...]

`load_clip` turns a path, bytes or PIL image into frames [T, 3, S, S] (images replicated to
`media.image_frames`, the training distribution); `generate_clips` runs already-decoded clips, so decoding can
happen elsewhere (background workers in `fvlm caption`, the request handlers of `fvlm serve`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from fvlm_cli.data.chat import encode_prompt
from fvlm_cli.data.media import frames_to_tensor, load_media, replicate
from fvlm_cli.errors import FvlmError
from fvlm_cli.model.generate import generate_ids, pad_frames, pad_text
from fvlm_cli.model.vlm import MODES


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    mode: str
    frames: int
    seconds: float            # model time of the batch this answer was generated in (decoding not included)
    first_token_s: float = 0.0
    extra: dict = field(default_factory=dict)


def clip_tensor(frames: np.ndarray, media_cfg, image_size: int, is_image: bool) -> torch.Tensor:
    """uint8 frames [T, S', S', 3] (decoded, or stored in shards) -> model input [T, 3, S, S].

    A single image is replicated to `media_cfg.image_frames`; frames of another size (shards made with another
    image_size) are resized to the model's."""
    if is_image:
        frames = replicate(frames, media_cfg.image_frames)
    x = frames_to_tensor(frames)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bicubic", antialias=True,
                                            align_corners=False)
    return x


def load_clip(src, media_cfg, image_size: int) -> torch.Tensor:
    """A video or image (path, bytes or PIL image) -> frames [T, 3, S, S]. Raises MediaError when unreadable."""
    clip = load_media(src, fps=media_cfg.fps, max_frames=media_cfg.max_frames, image_size=image_size)
    return clip_tensor(clip.frames, media_cfg, image_size, clip.is_image)


def prepare_media(paths, media_cfg, image_size: int):
    """Load each path with the one media policy. Returns (frames [B, T, 3, S, S], frame_mask [B, T], counts)."""
    return pad_frames([load_clip(p, media_cfg, image_size) for p in paths])


def stop_ids(tokenizer) -> tuple[int, ...]:
    """`<|im_end|>` and eos: generation stops at either."""
    ids = {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id}
    return tuple(sorted(i for i in ids if i is not None and i >= 0))


def encode_prompts(lm, prompts: Sequence, order: Optional[str] = None):
    """Prompts -> right-padded ids [B, S], attention mask [B, S], visual positions [B].

    A prompt is a user message (str; None = the model's default prompt) or a whole conversation
    ([{"role", "content"}...], an optional system message first, ending with a user turn)."""
    order = order or lm.chat.order
    if order not in ("video_first", "question_first"):
        raise FvlmError(f"order {order!r}: use video_first or question_first")
    tok = lm.tokenizer
    convs = [p if isinstance(p, list) else [{"role": "user", "content": p or lm.chat.default_prompt}] for p in prompts]
    encs = [encode_prompt(c, tok, system_prompt=lm.chat.system_prompt, order=order) for c in convs]
    return pad_text([e.input_ids for e in encs], [e.visual_pos for e in encs], tok.pad_token_id or 0)


def generate_clips(lm, clips: Sequence[torch.Tensor], prompts: Sequence, *, mode: str = "autoregressive",
                   max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                   repetition_penalty: float = 1.0, order: Optional[str] = None, seed: Optional[int] = None,
                   on_step: Optional[Callable[[list], Optional[list]]] = None) -> list[Generation]:
    """Decoded clips [T_i, 3, S, S] and one prompt each (see `encode_prompts`) -> one Generation each.

    `on_step(tokens)` is called after every decoding step with each row's new token id (None once it has stopped);
    it may return the rows to stop now.
    """
    if mode not in MODES:
        raise FvlmError(f"mode {mode!r}: use one of {', '.join(MODES)}")
    if len(clips) != len(prompts):
        raise ValueError(f"{len(clips)} clips but {len(prompts)} prompts")
    model, tok = lm.model, lm.tokenizer
    dev = model.device
    frames, frame_mask, counts = pad_frames(list(clips))
    ids, am, vp = encode_prompts(lm, prompts, order)
    stops = stop_ids(tok)
    timings: dict = {}
    out = generate_ids(model, frames.to(dev), frame_mask.to(dev), ids.to(dev), am.to(dev),
                       vp.to(dev), mode=mode, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                       repetition_penalty=repetition_penalty, stop_ids=stops, pad_id=tok.pad_token_id or 0, seed=seed,
                       timings=timings, on_step=on_step)
    results = []
    for o, n in zip(out, counts):
        text = tok.decode([i for i in o if i not in stops], skip_special_tokens=True).strip()
        results.append(Generation(text, o, mode, n, timings["seconds"], timings.get("first_token_s", 0.0),
                                  {"prompt_tokens": int(am[len(results)].sum()) + n,
                                   "finish_reason": "stop" if o and o[-1] in stops else "length"}))
    return results


def generate(lm, media: list, prompt: str | list[str] | None = None, *, mode: str = "autoregressive",
             max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0, repetition_penalty: float = 1.0,
             order: str | None = None, seed: int | None = None) -> list[Generation]:
    """Caption / answer for each video or image (path, bytes or PIL image) with a loaded model (`load_model`).

    Raises MediaError for an unreadable input; `fvlm caption` isolates such inputs instead (fvlm_cli.infer.captioner).
    """
    prompts = prompt if isinstance(prompt, list) else [prompt] * len(media)
    clips = [load_clip(m, lm.media, lm.model.image_size) for m in media]
    return generate_clips(lm, clips, prompts, mode=mode, max_new_tokens=max_new_tokens, temperature=temperature,
                          top_p=top_p, repetition_penalty=repetition_penalty, order=order, seed=seed)
