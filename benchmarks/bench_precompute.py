"""Precompute speed on CPU (SPEC §9): `load_media` (seek or one partial pass, only the picked frames
converted) against `decode_all_frames_baseline` (decode and convert every frame), both at 1 fps, one
decoder thread each (precompute runs one process per core), best of N runs. Also the whole driver (decode + JPEG + tar)
on the same videos with N workers.

    python benchmarks/bench_precompute.py [--repeats 3] [--workers 2] [--quick]

Writes benchmarks/results/precompute_cpu.json and prints a table. Target: speed-up >= 3x.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import bisect

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "precompute_cpu.json"

# name, seconds, (width, height), keyframe interval in frames (30 = one per second: dense; 300: sparse)
VIDEOS = [
    ("dense_320x240_40s", 40, (320, 240), 30),
    ("sparse_320x240_40s", 40, (320, 240), 300),
    ("dense_224x224_20s", 20, (224, 224), 30),
    ("sparse_288x224_60s", 60, (288, 224), 250),
]
QUICK = [("dense_224x224_20s", 20, (224, 224), 30), ("sparse_288x224_20s", 20, (288, 224), 250)]


def decode_all_frames_baseline(src, *, fps: float = 1.0, max_frames: int = 64, image_size: int = 224) -> "media.Clip":
    """The naive reader `load_video` is benchmarked against: decode and convert EVERY frame, then pick.

    Same decoder settings, transform and picking rule as `load_video`, so the output is identical. Lives here,
    not in the library: only this benchmark (and the test that checks the two agree) uses it.
    """
    from fvlm_cli.data import media
    from fvlm_cli.data.media import (_EPS, Clip, MediaError, _frame_to_square, _legacy_rotation, _one_line, _Video,
                                     sample_timestamps)

    video = _Video(src)
    try:
        duration = video.metadata_duration() or video.scan_duration()
        targets = sample_timestamps(duration or 0.0, fps, max_frames)
        converted, ftimes = [], []
        try:
            for frame in video.frames():
                ftimes.append(video.frame_time(frame))
                rotation = frame.rotation or _legacy_rotation(video.stream)
                converted.append(_frame_to_square(frame, image_size, rotation, video.sar))
        except av.error.FFmpegError as e:
            raise MediaError(f"{video.name}: cannot decode video ({_one_line(e)})") from e
    finally:
        video.close()
    if not converted:
        raise MediaError(f"{video.name}: no decodable video frames")
    picked = [max(0, bisect.bisect_right(ftimes, t + _EPS) - 1) for t in targets]
    return Clip(frames=np.stack([converted[j] for j in picked]), timestamps=[round(ftimes[j], 6) for j in picked],
                is_image=False, duration=duration, source=video.name)


def write_video(path: Path, seconds: int, size: tuple[int, int], gop: int, fps: int = 30) -> Path:
    """A textured background scrolling under a moving square (x264, yuv420p): real motion, real bitrate."""
    w, h = size
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (h, w * 2, 3), dtype=np.uint8)
    texture = ((texture.astype(np.uint16) + np.roll(texture, 1, 1) + np.roll(texture, 1, 0)) // 3).astype(np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"preset": "veryfast", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        for i in range(seconds * fps):
            x = i % w
            arr = np.ascontiguousarray(texture[:, x:x + w])
            s = h // 5
            y0, x0 = (i * 2) % (h - s), (i * 3) % (w - s)
            arr[y0:y0 + s, x0:x0 + s] = (230, 40, 40)
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def timed_pair(fast, base, repeats: int):
    """Best-of-`repeats` seconds of each, alternating the two so a busy machine slows both alike."""
    t_fast, t_base, out = [], [], {}
    for _ in range(repeats):
        for name, fn, times in (("fast", fast, t_fast), ("base", base, t_base)):
            t0 = time.perf_counter()
            out[name] = fn()
            times.append(time.perf_counter() - t0)
    return min(t_fast), min(t_base), out["fast"], out["base"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--quick", action="store_true", help="two 20 s videos, one repeat")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats

    from fvlm_cli.data import media, video
    from fvlm_cli.data.precompute import run_precompute
    from fvlm_cli.data.sources.base import SourceOptions
    from fvlm_cli.settings import MediaConfig

    video.DECODE_THREADS = 1  # per-core numbers: one process per core, as precompute runs
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "videos"
        folder.mkdir()
        for name, seconds, size, gop in QUICK if args.quick else VIDEOS:
            path = write_video(folder / f"{name}.mp4", seconds, size, gop)
            (folder / f"{name}.txt").write_text(name)
            kw = dict(fps=1.0, max_frames=64, image_size=args.image_size)
            t_fast, t_base, fast, base = timed_pair(lambda: media.load_media(path, **kw),
                                                    lambda: decode_all_frames_baseline(path, **kw), repeats)
            same = fast.frames.shape == base.frames.shape and bool(np.array_equal(fast.frames, base.frames))
            n = len(fast.timestamps)
            rows.append({"video": name, "seconds": seconds, "size": list(size), "keyint": gop,
                         "frames_sampled": n, "load_media_s": t_fast, "baseline_s": t_base,
                         "load_media_frames_per_s": n / t_fast, "baseline_frames_per_s": n / t_base,
                         "speedup": t_base / t_fast, "identical_frames": same})

        # the whole driver: decode + JPEG + tar, `workers` processes
        copies = 2 if args.quick else 3  # more videos than workers so every process stays busy
        for k in range(1, copies):
            for p in list(folder.glob("*.mp4")):
                if "_copy" not in p.stem:
                    (folder / f"{p.stem}_copy{k}.mp4").symlink_to(p)
                    (folder / f"{p.stem}_copy{k}.txt").write_text(p.stem)
        t0 = time.perf_counter()
        summary = run_precompute("videos", str(folder), Path(tmp) / "shards", workers=args.workers, shard_size=2,
                                 progress=False, opts=SourceOptions(media=MediaConfig(image_size=args.image_size)))
        wall = time.perf_counter() - t0

    fast_total = sum(r["load_media_s"] for r in rows)
    base_total = sum(r["baseline_s"] for r in rows)
    frames_total = sum(r["frames_sampled"] for r in rows)
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "pyav": av.__version__, "processor": platform.processor()},
        "settings": {"fps": 1.0, "max_frames": 64, "image_size": args.image_size, "decode_threads": 1,
                     "repeats": repeats, "statistic": "best of repeats, alternating",
                     "load_average_1m": os.getloadavg()[0]},
        "videos": rows,
        "per_worker": {
            "load_media_videos_per_s": len(rows) / fast_total, "load_media_frames_per_s": frames_total / fast_total,
            "baseline_videos_per_s": len(rows) / base_total, "baseline_frames_per_s": frames_total / base_total,
            "speedup": base_total / fast_total,
        },
        "driver": {"workers": args.workers, "videos": summary["samples"], "frames": summary["frames"],
                   "failures": summary["failures"], "wall_s": wall, "videos_per_s": summary["samples"] / wall,
                   "frames_per_s": summary["frames"] / wall,
                   "videos_per_s_per_worker": summary["samples"] / wall / max(args.workers, 1)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    render(result)
    print(f"wrote {args.out}", file=sys.stderr)


def render(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="precompute: load_media vs decode-every-frame baseline (1 fps, 1 decoder thread)")
    for col in ("video", "keyint", "frames", "load_media s", "baseline s", "load_media fr/s", "baseline fr/s",
                "speed-up", "same frames"):
        table.add_column(col, justify="left" if col == "video" else "right")
    for r in result["videos"]:
        table.add_row(r["video"], str(r["keyint"]), str(r["frames_sampled"]), f"{r['load_media_s']:.3f}",
                      f"{r['baseline_s']:.3f}", f"{r['load_media_frames_per_s']:.0f}",
                      f"{r['baseline_frames_per_s']:.0f}", f"{r['speedup']:.1f}x", "yes" if r["identical_frames"] else "NO")
    pw = result["per_worker"]
    table.add_row("all (per worker)", "", "", f"{pw['load_media_videos_per_s']:.2f} vid/s",
                  f"{pw['baseline_videos_per_s']:.2f} vid/s", f"{pw['load_media_frames_per_s']:.0f}",
                  f"{pw['baseline_frames_per_s']:.0f}", f"{pw['speedup']:.1f}x", "")
    console = Console(width=150)
    console.print(table)
    d = result["driver"]
    console.print(f"driver (decode + JPEG + tar), {d['workers']} workers: {d['videos']} videos, "
                  f"{d['videos_per_s']:.2f} videos/s ({d['videos_per_s_per_worker']:.2f} per worker), "
                  f"{d['frames_per_s']:.0f} frames/s, {d['failures']} failures")


if __name__ == "__main__":
    main()
