"""What every media reader shares (SPEC §3.1): the sampling policy, the square transform, `Clip`, and the
checks and names of inputs. `media.py` is the entry point (`load_media`); `video.py` decodes videos."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Optional, Sequence, Union

import av
import numpy as np
from PIL import Image

from fvlm_cli.errors import MediaError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VIDEO_EXTS: frozenset[str] = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
    ".flv", ".wmv", ".asf", ".3gp", ".ogv", ".vob", ".y4m", ".hevc", ".h265", ".265", ".h264", ".264",
})
IMAGE_EXTS: frozenset[str] = frozenset({
    ".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm",
})


# bicubic on both sides of the pipeline: swscale widens its kernel when it shrinks, so this is antialiased
_INTERPOLATION = "BICUBIC"
_EPS = 1e-6

Source = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, BinaryIO]
Window = Optional[Sequence[float]]  # (start, end) seconds: sample only inside it (MVBench original layout)


def _is_stream(src: Any) -> bool:
    """A binary file object (e.g. a zip member read in place): needs read and seek."""
    return hasattr(src, "read") and hasattr(src, "seek") and not isinstance(src, Image.Image)


@dataclass
class Clip:
    """Frames ready for the model's preprocessing (`frames_to_tensor`).

    frames: [T, S, S, 3] uint8 RGB, already resized and centre-cropped to S = image_size.
    timestamps: seconds from the start of the video, one per frame (images: [0.0]).
    """

    frames: np.ndarray
    timestamps: list[float]
    is_image: bool
    duration: Optional[float]
    source: str
    window: Optional[tuple[float, float]] = None  # the (start, end) actually sampled, when one was asked for


# ---------------------------------------------------------------------------------------------------- policy


def sample_timestamps(duration: float, fps: float = 1.0, max_frames: int = 64) -> list[float]:
    """Target times (seconds) for a video of `duration`: the centres of n equal bins over the whole video,
    n = floor(duration * fps) clamped to [1, max_frames]."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    if duration is None or not math.isfinite(duration) or duration <= 0:
        return [0.0]
    # the epsilon keeps 3 s at 1/3 fps (0.999...) from losing a frame to float rounding
    n = max(1, min(int(math.floor(duration * fps + 1e-6)), max_frames))
    return [(k + 0.5) * duration / n for k in range(n)]


def _square_size(width: float, height: float, size: int) -> tuple[int, int]:
    """(w, h) after scaling the shorter side of width x height to `size` (the longer side rounded, >= size)."""
    scale = size / min(width, height)
    return max(size, int(round(width * scale))), max(size, int(round(height * scale)))


def _center_crop(arr: np.ndarray, size: int) -> np.ndarray:
    h, w = arr.shape[:2]
    y0, x0 = (h - size) // 2, (w - size) // 2
    return arr[y0:y0 + size, x0:x0 + size]


def _frame_to_square(frame: av.VideoFrame, size: int, rotation: int = 0, sar: float = 1.0) -> np.ndarray:
    """[S, S, 3] uint8 RGB: swscale resize (shorter side -> size, honouring the pixel aspect), crop, rotate."""
    disp_w = frame.width * (sar if sar and sar > 0 else 1.0)
    w, h = _square_size(disp_w, frame.height, size)
    rgb = frame.reformat(width=w, height=h, format="rgb24", interpolation=_INTERPOLATION).to_ndarray()
    out = _center_crop(rgb, size)
    k = int(round(rotation / 90.0)) % 4  # display matrix angle is counter-clockwise, like np.rot90
    if k:
        out = np.rot90(out, k)
    return np.ascontiguousarray(out)


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size`, centre crop to size x size: the exact transform video frames get (PyAV's scaler)."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    return Image.fromarray(_frame_to_square(av.VideoFrame.from_image(img), size))


def replicate(frames: np.ndarray, n: int) -> np.ndarray:
    """An image's single frame [1, S, S, 3] repeated to [n, S, S, 3]; anything with more frames is returned as is."""
    if frames.shape[0] == 1 and n > 1:
        return np.repeat(frames, n, axis=0)
    return frames


def frames_to_tensor(frames: np.ndarray):
    """[T, S, S, 3] uint8 -> torch.FloatTensor [T, 3, S, S]: scaled to [0, 1], then ImageNet mean/std normalised."""
    import torch  # media decoding must not pull torch into precompute workers that never need it

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


# ---------------------------------------------------------------------------------------------------- dispatch


def _source_name(src: Any) -> str:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(src, Image.Image):
        return getattr(src, "filename", "") or "<image>"
    if _is_stream(src):
        return str(getattr(src, "name", "") or "<stream>")
    return str(src)


def _one_line(err: BaseException) -> str:
    """An exception as one short line (FFmpeg errors without their errno and repeated file name)."""
    text = getattr(err, "strerror", None) if isinstance(err, av.error.FFmpegError) else None
    text = " ".join(str(text or err).split())
    return text or type(err).__name__


def _sniff(head: bytes) -> Optional[str]:
    """'image' / 'video' from magic bytes, None when unsure (then PyAV decides)."""
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "video"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*")):
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    return None


def _check_file(src: Any) -> Optional[Path]:
    """The path for a file source after checking it exists and is non-empty (None for bytes / PIL)."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise MediaError("<bytes>: empty input (0 bytes); nothing to decode")
        return None
    if isinstance(src, Image.Image) or _is_stream(src):
        return None
    if not isinstance(src, (str, os.PathLike)):
        raise MediaError(f"cannot load media from a {type(src).__name__}; give a path, bytes or a PIL image")
    path = Path(src)
    if not path.exists():
        raise MediaError(f"{path}: no such file")
    if path.is_dir():
        raise MediaError(f"{path}: is a directory, not a video or image file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: empty file (0 bytes)")
    return path



def window_targets(duration: Optional[float], fps: float, max_frames: int,
                   window: Window = None) -> tuple[list[float], Optional[tuple[float, float]]]:
    """The policy's target times over the whole video, or only inside `window` (clipped to the video):
    (targets, the window used). A window that misses the video entirely is a MediaError."""
    if window is None:
        return sample_timestamps(duration or 0.0, fps, max_frames), None
    start, end = (float(x) for x in window)
    start = max(0.0, start)
    if duration:
        end = min(end, duration)
    if not end > start:
        raise MediaError(f"window [{window[0]}, {window[1]}] s lies outside the video (duration {duration or 0:.3f} s)")
    return [start + t for t in sample_timestamps(end - start, fps, max_frames)], (round(start, 6), round(end, 6))
