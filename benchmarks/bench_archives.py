"""Reading videos inside published archives (SPEC §3.6): the same clips decoded by `load_media` from plain
files, from members of a stored zip (Video-MME / MVBench / OpenVid), and from a zip split in two parts read as
one stream (OpenVid `_partaa`/`_partab`); plus the one-off cost of extracting a tar.gz (LLaVA-Video) into
the cache. Best of N, one decoder thread, alternating readers.

    python benchmarks/bench_archives.py [--repeats 3] [--videos 6]

Writes benchmarks/results/archives_cpu.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results" / "archives_cpu.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--videos", type=int, default=6)
    args = ap.parse_args()

    from bench_precompute import write_video

    from fvlm_cli.data import archives, media, video

    video.DECODE_THREADS = 1
    kw = dict(fps=1.0, max_frames=64, image_size=224)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = [write_video(tmp / f"v{i}.mp4", 20, (320, 240), 30 if i % 2 else 250) for i in range(args.videos)]
        zpath = tmp / "videos_chunked_01.zip"
        with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_STORED) as zf:
            for p in paths:
                zf.write(p, f"data/{p.name}")
        data = zpath.read_bytes()
        parts = [tmp / "OpenVid_part1_partaa", tmp / "OpenVid_part1_partab"]
        parts[0].write_bytes(data[: len(data) // 2])
        parts[1].write_bytes(data[len(data) // 2:])
        whole_index = archives.index_zips([(zpath,)])
        split_index = archives.index_zips([tuple(parts)])

        def plain():
            return [media.load_media(p, **kw) for p in paths]

        def member(index):
            def run():
                out = []
                for p in paths:
                    with archives.open_member(index[f"data/{p.name}"]) as f:
                        out.append(media.load_media(f, **kw))
                return out
            return run

        readers = {"plain file": plain, "zip member": member(whole_index), "split zip member": member(split_index)}
        best = {name: float("inf") for name in readers}
        frames = {}
        for _ in range(args.repeats):
            for name, fn in readers.items():
                t0 = time.perf_counter()
                clips = fn()
                best[name] = min(best[name], time.perf_counter() - t0)
                frames[name] = [c.frames for c in clips]
        same = all(all((a == b).all() for a, b in zip(frames["plain file"], frames[n])) for n in readers)

        tgz = tmp / "sub_videos_1.tar.gz"
        with tarfile.open(tgz, "w:gz") as tf:
            for p in paths:
                tf.add(p, arcname=f"academic_source/{p.name}")
        t0 = time.perf_counter()
        archives.extract_tar_cached(tgz, tmp / "cache")
        extract_s = time.perf_counter() - t0
        total_mb = sum(p.stat().st_size for p in paths) / 2**20

    rows = [{"reader": n, "seconds": round(best[n], 3), "videos_per_s": round(args.videos / best[n], 2),
             "vs_plain": round(best["plain file"] / best[n], 3)} for n in readers]
    result = {"machine": platform.platform(), "cpus": os.cpu_count(), "videos": args.videos,
              "video": "320x240 20 s H.264, half with a keyframe per second, half every 8.3 s",
              "policy": kw, "repeats": args.repeats, "identical_frames": bool(same), "readers": rows,
              "tar_gz_extract": {"seconds": round(extract_s, 3), "video_mb": round(total_mb, 1),
                                 "mb_per_s": round(total_mb / extract_s, 1), "extra_disk_mb": round(total_mb, 1)}}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(f"{r['reader']:18s} {r['seconds']:7.3f} s  {r['videos_per_s']:6.2f} videos/s  x{r['vs_plain']:.3f}")
    print(f"tar.gz extraction: {extract_s:.3f} s for {total_mb:.1f} MB (same again on disk); frames identical: {same}")


if __name__ == "__main__":
    main()
