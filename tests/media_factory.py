"""Tiny media files for tests, written with PyAV: videos (any codec this PyAV build has), images, audio-only.

Everything is small (tens of pixels, a few seconds) so a test that writes a clip spends milliseconds on it.
`index_frames` paints each frame's index as a 4x4 grid of black/white cells over the central square, and
`read_index` reads it back from a decoded (resized, centre-cropped) frame: that is how tests check *which*
source frame the loader picked, robustly to compression and scaling.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import av
import numpy as np
from PIL import Image

GRID = 4  # index_frames: GRID x GRID bits -> up to 65536 distinct frame indices

# container extension and pixel format per codec; the first available codec of a family is used
_CODEC_PIX_FMT = {
    "libx264": "yuv420p", "h264": "yuv420p", "libx265": "yuv420p", "hevc": "yuv420p",
    "libvpx-vp9": "yuv420p", "libvpx": "yuv420p", "mpeg4": "yuv420p", "mjpeg": "yuvj420p",
    "gif": "rgb8", "ffv1": "yuv420p",
}
_FALLBACK = {"libx264": ["h264", "mpeg4"], "libx265": ["hevc", "libx264", "mpeg4"],
             "libvpx-vp9": ["libvpx", "mpeg4"], "gif": [], "mpeg4": []}
_DEFAULT_EXT = {"libx264": ".mp4", "h264": ".mp4", "libx265": ".mp4", "hevc": ".mp4", "libvpx-vp9": ".webm",
                "libvpx": ".webm", "mpeg4": ".mp4", "gif": ".gif", "mjpeg": ".avi", "ffv1": ".mkv"}


@lru_cache(maxsize=None)
def has_encoder(name: str) -> bool:
    """True when this PyAV build can encode with `name`."""
    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:
        return False


def pick_codec(codec: str) -> str:
    """`codec` if this PyAV build has it, else the first available fallback (libx264 -> h264 -> mpeg4)."""
    for name in [codec, *_FALLBACK.get(codec, ["mpeg4"])]:
        if has_encoder(name):
            return name
    raise RuntimeError(f"no encoder available for {codec!r} in this PyAV build")


def moving_square_frames(n: int, size: tuple[int, int] = (64, 48), *, square: int = 8,
                         color=(255, 40, 40), background=(20, 20, 20), step: int = 2) -> np.ndarray:
    """[n, H, W, 3] uint8: a square moving right by `step` px per frame (wrapping), on a plain background."""
    w, h = size
    frames = np.empty((n, h, w, 3), np.uint8)
    frames[:] = background
    y0 = (h - square) // 2
    for i in range(n):
        x0 = (i * step) % max(1, w - square)
        frames[i, y0:y0 + square, x0:x0 + square] = color
    return frames


def index_frames(n: int, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """[n, H, W, 3] uint8 whose central square shows the frame index as GRID x GRID black/white cells."""
    w, h = size
    side = min(w, h)
    x0, y0 = (w - side) // 2, (h - side) // 2
    frames = np.full((n, h, w, 3), 128, np.uint8)
    cell = side / GRID
    for i in range(n):
        for b in range(GRID * GRID):
            r, c = divmod(b, GRID)
            val = 255 if (i >> b) & 1 else 0
            ya, yb = y0 + int(round(r * cell)), y0 + int(round((r + 1) * cell))
            xa, xb = x0 + int(round(c * cell)), x0 + int(round((c + 1) * cell))
            frames[i, ya:yb, xa:xb] = val
    return frames


def read_index(frame: np.ndarray) -> int:
    """The index painted by `index_frames`, read from a square [S, S, 3] frame (the loader's output)."""
    s = frame.shape[0]
    cell = s / GRID
    gray = frame.astype(np.float32).mean(axis=2)
    out = 0
    for b in range(GRID * GRID):
        r, c = divmod(b, GRID)
        ya, yb = int(r * cell + cell * 0.3), int(r * cell + cell * 0.7) + 1
        xa, xb = int(c * cell + cell * 0.3), int(c * cell + cell * 0.7) + 1
        if gray[ya:yb, xa:xb].mean() > 128:
            out |= 1 << b
    return out


def write_video(path, frames: Optional[np.ndarray] = None, *, fps: float = 30, seconds: Optional[float] = None,
                size: tuple[int, int] = (64, 48), codec: str = "libx264", gop: Optional[int] = None,
                rotation: Optional[int] = None, vfr_times: Optional[Sequence[float]] = None,
                bframes: Optional[int] = None, options: Optional[dict] = None) -> Path:
    """Encode `frames` ([T, H, W, 3] uint8 RGB; default: moving square for `seconds` at `fps`) to `path`.

    gop: keyframe interval in frames (None = encoder default; x264's is 250, i.e. sparse).
    rotation: display-matrix rotation in degrees counter-clockwise (what `VideoFrame.rotation` reads back);
        written with `VideoStream.set_display_rotation`, which PyAV >= 17 provides.
    vfr_times: one presentation time (seconds) per frame: variable frame rate.
    The codec falls back (libx264 -> h264 -> mpeg4) when this PyAV build lacks it. Returns the path.
    """
    path = Path(path)
    if frames is None:
        n = vfr_times is not None and len(vfr_times) or max(1, int(round(fps * (seconds if seconds else 2.0))))
        frames = moving_square_frames(n, size)
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if vfr_times is not None and len(vfr_times) != len(frames):
        raise ValueError("vfr_times needs one time per frame")
    codec = pick_codec(codec)
    h, w = frames.shape[1:3]
    if codec != "gif" and (h % 2 or w % 2):
        raise ValueError("this codec needs even width and height")
    if codec == "libx265" and w < 64:
        # x265 4.x aborts the whole process (heap corruption) on some narrow frames, e.g. 48x32
        raise ValueError("libx265 needs frames at least 64 px wide here")

    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = w, h
        stream.pix_fmt = _CODEC_PIX_FMT.get(codec, "yuv420p")
        if vfr_times is not None:
            tb = Fraction(1, 1000)
            stream.time_base = tb
            stream.codec_context.time_base = tb
        else:
            tb = 1 / rate
            stream.codec_context.time_base = tb
        if gop is not None:
            stream.codec_context.gop_size = gop
        opts = dict(options or {})
        if codec in ("libx264", "libx265"):
            opts.setdefault("preset", "veryfast")
            params = ["log-level=error"] if codec == "libx265" else []
            if gop is not None:  # fixed keyframe interval: no scene-cut keyframes, no adaptive minimum
                params.append(f"keyint={gop}:min-keyint={gop}:scenecut=0")
            if bframes is None and vfr_times is not None:
                bframes = 0  # x264 B-frames with irregular pts make the mp4 muxer write a too-short duration
            if bframes is not None:
                params.append(f"bframes={bframes}")
            if params:
                opts.setdefault("x264-params" if codec == "libx264" else "x265-params", ":".join(params))
        if codec in ("libvpx-vp9", "libvpx"):
            opts.setdefault("deadline", "realtime")
            opts.setdefault("cpu-used", "8")
            opts.setdefault("lag-in-frames", "0")
        stream.options = opts
        if rotation:
            stream.set_display_rotation(rotation)
        for i, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            if codec == "gif":
                frame = frame.reformat(format="rgb8")
            frame.pts = int(round(vfr_times[i] / tb)) if vfr_times is not None else i
            frame.time_base = tb
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def default_ext(codec: str) -> str:
    """Container extension that suits `codec` (after fallback)."""
    return _DEFAULT_EXT.get(pick_codec(codec), ".mkv")


def write_image(path, size: tuple[int, int] = (64, 48), color=(255, 0, 0), *, mode: str = "RGB",
                array: Optional[np.ndarray] = None, exif_orientation: Optional[int] = None) -> Path:
    """A plain image of `size` (W, H) and `color` (or `array` [H, W, 3]) saved in `mode` (RGB, RGBA, L, P)."""
    path = Path(path)
    img = Image.fromarray(np.ascontiguousarray(array, np.uint8)) if array is not None else Image.new("RGB", size, color)
    if mode == "RGBA":
        img = img.convert("RGBA")
    elif mode != "RGB":
        img = img.convert(mode)
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    img.save(path, **kwargs)
    return path


def write_audio_only(path, seconds: float = 1.0, rate: int = 8000) -> Path:
    """A container with one audio stream and no video (default .wav via pcm_s16le; .m4a/.mp4 via aac)."""
    path = Path(path)
    codec = "aac" if path.suffix in (".m4a", ".mp4", ".mov") and has_encoder("aac") else "pcm_s16le"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        fmt = "fltp" if codec == "aac" else "s16"
        n = int(seconds * rate)
        samples = (np.sin(np.arange(n) * 2 * np.pi * 440 / rate) * 0.3)
        chunk = 1024
        for i in range(0, n, chunk):
            part = samples[i:i + chunk]
            data = part.astype(np.float32)[None] if fmt == "fltp" else (part * 32767).astype(np.int16)[None]
            frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
            frame.sample_rate = rate
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
