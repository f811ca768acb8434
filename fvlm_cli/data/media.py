"""The one media policy (SPEC §3.1): which frames of a video are read, and how every frame becomes a square.

precompute, training, bench and caption all call `load_media`; nothing else in fvlm decodes media.

- Sampling: `fps` frames per second (default 1), at least 1, at most `max_frames`; the frames are the bin
  centres `t_k = (k + 0.5) * duration / n` spread over the whole video, and each picks the frame on screen
  at that time (the last frame whose pts <= t_k). Times come from pts * time_base, never frame counts,
  so variable frame rate needs no special case.
- Transform: shorter side resized to `image_size` with PyAV's scaler (swscale, bicubic), then a centre
  crop to a square; display rotation applied after. Images go through the very same scaler.
- Decoding: keyframe positions come from the container index (mp4/mov/avi/mkv/webm) or from demuxing
  the first seconds of packets (cheap: no decoding). A target is reached by seeking to its keyframe when
  that skips enough frames; otherwise decoding runs on in order. So dense keyframes give a seek per
  frame and sparse ones one in-order pass; either way only the picked frames are converted and decoding
  stops right after the last one.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Sequence

import av
import numpy as np
from PIL import Image, ImageOps

from fvlm_cli.data.media_base import (IMAGE_EXTS, IMAGENET_MEAN, IMAGENET_STD, VIDEO_EXTS, _EPS, Clip, Source,  # noqa: F401
                                      Window, _check_file, _frame_to_square, _is_stream, _one_line, _sniff,
                                      _source_name, frames_to_tensor, replicate, resize_center_crop,
                                      sample_timestamps, window_targets)
from fvlm_cli.data.video import _legacy_rotation, _Video, load_video  # noqa: F401  (re-exported)
from fvlm_cli.errors import MediaError

# ---------------------------------------------------------------------------------------------------- dispatch


def load_media(src: Source, *, fps: float = 1.0, max_frames: int = 64, image_size: int = 224,
               kind: str = "auto", window: Window = None) -> Clip:
    """Load a video or image as a `Clip`; `src` is a local path, the encoded file's bytes, a seekable binary
    file object (a zip member read in place; its `name` gives the extension), or a PIL image.

    kind: auto (extension, then magic bytes: gif is a video) | video | image | frames (a directory of frame
    images, see `load_frames`; only when asked, so a directory given by mistake stays an error).
    window: (start, end) seconds; a video or frame folder is sampled only inside it, by the same policy.
    """
    if kind not in ("auto", "video", "image", "frames"):
        raise ValueError(f"kind must be auto, video, image or frames, got {kind!r}")
    if kind == "frames":
        return load_frames(src, fps=fps, max_frames=max_frames, image_size=image_size, window=window)
    if isinstance(src, Image.Image):
        if kind == "video":
            raise MediaError(f"{_source_name(src)}: a PIL image cannot be read as a video")
        return load_image(src, image_size=image_size)
    path = _check_file(src)
    if kind == "auto":
        stream = _is_stream(src)
        ext = path.suffix.lower() if path is not None else Path(_source_name(src)).suffix.lower() if stream else ""
        if ext in IMAGE_EXTS:
            kind = "image"
        elif ext in VIDEO_EXTS:
            kind = "video"
        else:
            if path is not None:
                with open(path, "rb") as f:
                    head = f.read(16)
            elif stream:
                src.seek(0)
                head = src.read(16)
                src.seek(0)
            else:
                head = bytes(src[:16])
            kind = _sniff(head) or "video"
    if kind == "image":
        return load_image(src, image_size=image_size)
    return load_video(src, fps=fps, max_frames=max_frames, image_size=image_size, window=window)


# ---------------------------------------------------------------------------------------------------- images


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB with transparency composited on white, 16-bit greyscale scaled down, EXIF orientation applied."""
    img = ImageOps.exif_transpose(img)
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info or img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


FRAME_FOLDER_FPS = 3.0  # MVBench's TVQA frame folders (frames_fps3_hq) hold 3 frames per second


def load_frames(folder, *, fps: float = 1.0, max_frames: int = 64, image_size: int = 224,
                source_fps: float = FRAME_FOLDER_FPS, window: Window = None, name: Optional[str] = None) -> Clip:
    """Frame images `source_fps` apart, sampled by the same policy as a video (only inside `window`).

    `folder`: a directory (its images sorted by name), or a sorted list of frames, each a path, bytes, or
    a zero-argument callable returning bytes (frames inside an archive: only the picked ones are read).
    """
    if isinstance(folder, (list, tuple)):
        files, label = list(folder), name or "<frames>"
    else:
        path = Path(folder)
        label = name or str(path)
        if not path.is_dir():
            raise MediaError(f"{path}: not a frame folder")
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise MediaError(f"{label}: frame folder holds no images")
    duration = len(files) / source_fps
    targets, used = window_targets(duration, fps, max_frames, window)
    picked, stamps = [], []
    for t in targets:
        i = min(len(files) - 1, int(t * source_fps + _EPS))  # the frame shown at time t
        frame = files[i]() if callable(files[i]) else files[i]
        picked.append(load_image(frame, image_size=image_size).frames[0])
        stamps.append(round(i / source_fps, 6))
    return Clip(np.stack(picked), stamps, False, duration, label, used)


def load_images(sources: Sequence[Source], *, image_size: int = 224) -> Clip:
    """Several images (a multi-image row) as one Clip whose frames are the images in order."""
    if not sources:
        raise MediaError("no images given")
    frames = [load_image(src, image_size=image_size).frames[0] for src in sources]
    return Clip(np.stack(frames), [0.0] * len(frames), True, None, f"<{len(frames)} images>")


def load_image(src: Source, *, image_size: int = 224) -> Clip:
    """An image (path, bytes or PIL) as a one-frame Clip [1, S, S, 3]: RGB, EXIF-oriented, resized, centre-cropped."""
    name = _source_name(src)
    if isinstance(src, Image.Image):
        img = src
    else:
        path = _check_file(src)
        try:
            img = Image.open(path if path is not None else src if _is_stream(src) else io.BytesIO(bytes(src)))
            img.load()
        except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
            raise MediaError(f"{name}: cannot read as an image ({_one_line(e)})") from e
    try:
        rgb = _to_rgb(img)
        frame = _frame_to_square(av.VideoFrame.from_image(rgb), image_size)
    except Exception as e:
        raise MediaError(f"{name}: cannot convert image to RGB ({_one_line(e)})") from e
    return Clip(frames=frame[None], timestamps=[0.0], is_image=True, duration=None, source=name)
