"""Loader throughput (SPEC §3.7): the same shard set read by `build_train_loader` from local disk, from a local
HTTP server (curl through webdataset's Pipe), and from that server with `data.cache_dir` (second epoch from
the cache), with 0 and 2 DataLoader workers. One epoch per measurement, best of N, batches of 8.

    python benchmarks/bench_loader.py [--samples 256] [--frames 8] [--size 224] [--repeats 2]

Writes benchmarks/results/loader_cpu.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "loader_cpu.json"
sys.path.insert(0, str(ROOT))


def write_set(out: Path, samples: int, frames: int, size: int, per_shard: int) -> int:
    """Textured frames (JPEG-realistic sizes) in precompute's format; returns the bytes written."""
    from fvlm_cli.data.shards import ShardWriter, build_manifest, sample_key, sample_record, write_json_atomic

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    out.mkdir(parents=True, exist_ok=True)
    recs, total = [], 0
    for n, start in enumerate(range(0, samples, per_shard)):
        w = ShardWriter(out / f"shard-{n:06d}.tar")
        for i in range(start, min(samples, start + per_shard)):
            fr = np.stack([np.roll(base, 3 * t + i, axis=1) for t in range(frames)])
            msgs = [{"role": "user", "content": "Describe this video."},
                    {"role": "assistant", "content": f"A textured clip number {i}."}]
            w.write(sample_key(i, f"clip{i}"), sample_record(f"clip{i}", "bench", "caption", msgs,
                                                             [float(t) for t in range(frames)], media_type="video"), fr)
        info = w.close()
        total += info.bytes
        recs.append({"name": info.name, "part": "0/1", "samples": info.samples, "sha256": info.sha256,
                     "bytes": info.bytes, "counts": {"source": {}, "kind": {}}, "frames": {}, "failures": []})
    write_json_atomic(out / "manifest.json", build_manifest(recs, source="bench", input=None, options={}, n_parts=1,
                                                            parts_complete=[0]))
    return total


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def epoch_time(path: str, workers: int, size: int, tok, cache_dir=None) -> tuple[float, int]:
    """Seconds for one epoch of the set, and its sample count."""
    from fvlm_cli.data.loader import build_train_loader
    from fvlm_cli.settings import RunConfig, ShardSet

    cfg = RunConfig()
    cfg.model.image_size = size
    cfg.data.train = [ShardSet(path=path)]
    cfg.data.batch_size, cfg.data.num_workers, cfg.data.shuffle_buffer = 8, workers, 64
    cfg.data.cache_dir = cache_dir
    loader = build_train_loader(cfg, tok, stage=2, epochs=1)
    t0 = time.perf_counter()
    n = sum(len(b["ids"]) for b in loader)
    secs = time.perf_counter() - t0
    loader.close()
    return secs, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--per-shard", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    from fvlm_cli.model.tokenizer import load_tokenizer

    tok = load_tokenizer("tiny")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "set"
        nbytes = write_set(root, args.samples, args.frames, args.size, args.per_shard)
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(root)))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}/shard-{{000000..{(args.samples - 1) // args.per_shard:06d}}}.tar"
        for workers in args.workers:
            for name, path, cache in (("local disk", str(root), None), ("HTTP (127.0.0.1)", url, None),
                                      ("HTTP + cache_dir, 1st epoch", url, "fresh"),
                                      ("HTTP + cache_dir, 2nd epoch", url, "warm")):
                best = None
                for r in range(args.repeats):
                    cdir = None
                    if cache:
                        cdir = str(Path(tmp) / f"cache-{workers}-{r}-{cache}")
                        if cache == "warm":
                            epoch_time(path, workers, args.size, tok, cdir)  # the first epoch fills the cache
                    secs, n = epoch_time(path, workers, args.size, tok, cdir)
                    best = secs if best is None else min(best, secs)
                rows.append({"source": name, "workers": workers, "samples": n, "seconds": round(best, 3),
                             "samples_per_s": round(n / best, 1), "MB_per_s": round(nbytes / 2**20 / best, 1)})
                print(f"{name:30s} workers={workers}  {n / best:7.1f} samples/s  {nbytes / 2**20 / best:6.1f} MB/s",
                      flush=True)
        httpd.shutdown()
    result = {"benchmark": "loader", "machine": platform.platform(), "cpus": os.cpu_count(),
              "load_average": os.getloadavg(), "set": {"samples": args.samples, "frames": args.frames,
                                                       "size": args.size, "per_shard": args.per_shard,
                                                       "MB": round(nbytes / 2**20, 1)},
              "repeats": args.repeats, "rows": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
