"""The precompute driver: source samples -> decoded, sampled, cropped frames -> shards (SPEC §3.2, §3.3).

How a run is laid out, so that it is deterministic, splittable and resumable (planning: `plan.py`; the
worker processes: `worker.py` and `pool.py`):
- worker processes decode media (`load_media`; URLs through `download.fetch`; archive members in place) and
  write whole shards; a shard is published by an atomic rename, then recorded in
  `.fvlm-state/shards/{name}.json` (samples, sha256, counts, failures). A re-run skips a shard whose record,
  plan and sha256 match, so a killed run resumes without duplicating or losing a sample;
- `manifest.json` and `failures.jsonl` are rebuilt from the records of every part in the directory, so
  parts run on several machines into one shared directory add up to one manifest (two parts finishing at
  the same instant may each miss the other's last shard in it: re-running any part, which resumes
  everything at once, rewrites it complete);
- a run in which every input failed exits non-zero with its top failure reasons and a hint.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, Optional

from fvlm_cli.data import shards as shard_format
from fvlm_cli.data.download import FetchOptions
from fvlm_cli.data.precompute import pool
from fvlm_cli.data.precompute.plan import (STATE_DIR, ShardTask, State, frames_of, parse_part, plan_hash,
                                           plan_shards, shard_name)
from fvlm_cli.data.precompute.pool import Tracker
from fvlm_cli.data.sources import get_source
from fvlm_cli.data.sources.base import RawSample, SourceOptions
from fvlm_cli.errors import DataError
from fvlm_cli.progress import Progress
from fvlm_cli.settings import PrecomputeConfig


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def render_summary(summary: dict) -> None:
    """The final table on stderr."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"precompute {summary['source']} (part {summary['part']})", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [("samples written", summary["samples"]), ("failures", summary["failures"]),
            ("fail ratio", f"{summary['fail_ratio']:.2%}"), ("frames", summary["frames"]),
            ("shards", f"{summary['shards']} ({summary['shards_resumed']} resumed)"),
            ("seconds", f"{summary['seconds']:.1f}"), ("samples/s", f"{summary['samples_per_s']:.1f}"),
            ("output", summary["out_dir"])]
    for name, value in rows:
        table.add_row(name, str(value))
    Console(stderr=True).print(table)



def run_config(cfg: PrecomputeConfig, progress: bool = True) -> dict:
    """`run_precompute` from a `PrecomputeConfig` (what the CLI calls)."""
    if not cfg.out:
        raise DataError("--out is required: the directory the shards go to")
    opts = SourceOptions(media=copy.deepcopy(cfg.media), limit=cfg.limit, seed=cfg.seed, cache_dir=cfg.cache_dir,
                         split=cfg.split, extra=dict(cfg.extra))
    fetch_options = FetchOptions(timeout=cfg.download.timeout, max_bytes=int(cfg.download.max_mb * 2**20),
                                 retries=cfg.download.retries, backoff=cfg.download.backoff,
                                 max_seconds=cfg.download.max_seconds)
    return run_precompute(cfg.source, cfg.input, cfg.out, workers=cfg.workers, part=parse_part(cfg.part),
                          opts=opts, shard_size=cfg.shard_size, max_fail_ratio=cfg.max_fail_ratio,
                          progress=progress, fetch_options=fetch_options, jpeg_quality=cfg.jpeg_quality,
                          retry_failed=cfg.retry_failed, verify=cfg.verify)


# ---------------------------------------------------------------- driver

def run_precompute(source_name: str, input: Optional[str], out_dir: str | os.PathLike, *,
                   workers: Optional[int] = None, part: tuple[int, int] = (0, 1),
                   opts: Optional[SourceOptions] = None, shard_size: int = 1000,
                   max_fail_ratio: Optional[float] = None, progress: bool = True,
                   fetch_options: Optional[FetchOptions] = None, jpeg_quality: int = shard_format.JPEG_QUALITY,
                   retry_failed: bool = False, verify: bool = False) -> dict:
    """Turn one source into shards in `out_dir`; return a summary dict (see `render_summary`).

    workers: decoding processes (default min(4, cpus)); 0 decodes in this process (debugging).
    part: (i, n) keeps the samples whose index % n == i. opts: media policy and source knobs.
    max_fail_ratio: after the run, raise `DataError` if failures / samples seen exceeds it (shards and
    manifest are kept). retry_failed: redo finished shards that recorded failures (e.g. after a network outage).
    verify: on resume, re-hash every finished shard (default: a shard whose size and mtime are as recorded is
    trusted; at terabytes, hashing them all again would take hours).
    """
    module = get_source(source_name)
    opts = copy.deepcopy(opts) if opts is not None else SourceOptions()
    fetch_options = fetch_options or FetchOptions()
    workers = default_workers() if workers is None else int(workers)
    i, n = part
    if n < 1 or not 0 <= i < n:
        raise DataError(f"--part {i}/{n}: need 0 <= i < n")
    if shard_size < 1:
        raise DataError(f"--shard-size must be at least 1, got {shard_size}")
    if workers < 0:
        raise DataError(f"--workers must be >= 0, got {workers}")
    if max_fail_ratio is not None and not 0 <= max_fail_ratio <= 1:
        raise DataError(f"--max-fail-ratio must be in [0, 1], got {max_fail_ratio}")
    # sources with a canonical Hub repo (HUB_REPO) read it when no --input is given
    if getattr(module, "REQUIRES_INPUT", not hasattr(module, "HUB_REPO")) and not input:
        raise DataError(f"source {source_name!r} needs --input (a local path or a Hub dataset id)")
    if opts.limit is not None and opts.limit < 0:
        raise DataError(f"--limit must be >= 0, got {opts.limit}")

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; give a directory")
    if getattr(module, "WRITES_MEDIA", False):
        opts.extra.setdefault("media_dir", str((out / "_media").resolve()))
    state = State(out)
    input_key = str(Path(input).expanduser().resolve()) if input and Path(input).expanduser().exists() else input
    media = {"fps": float(opts.media.fps), "max_frames": int(opts.media.max_frames),
             "image_size": int(opts.media.image_size)}
    fingerprint = {"input": input_key, "parts": n, "shard_size": shard_size, **media, "limit": opts.limit,
                   "seed": opts.seed, "split": opts.split, "extra": opts.extra, "jpeg_quality": jpeg_quality}
    fingerprint = json.loads(json.dumps(fingerprint, default=str))
    state.check_options(source_name, fingerprint)
    options = {**{k: v for k, v in fingerprint.items() if k != "input"},
               "download": dataclasses.asdict(fetch_options)}
    part_text = f"{i}/{n}"
    # the source checks its input now (bad path, unreadable CSV: DataError) before anything is written
    samples: Iterable[RawSample] = module.iter_samples(input, opts)
    if opts.limit is not None:  # sources may stop early themselves; this makes --limit exact for all
        samples = itertools.islice(samples, opts.limit)
    state.create()
    state.start(part, {"source": source_name, "input": input, "part": part_text, "fingerprint": fingerprint,
                       "options": options})
    prefix = shard_name(source_name, part, 0)[: -len("000000.tar")]
    state.clean_temporaries(prefix)

    def tasks() -> Iterator[ShardTask]:
        for k, items in plan_shards(samples, part, shard_size):
            yield ShardTask(name=shard_name(source_name, part, k), part=part_text, out_dir=str(out), items=items,
                            plan=plan_hash(items, media, jpeg_quality), media=media, fetch=fetch_options,
                            download_dir=str(Path(opts.cache_dir or out / STATE_DIR) / "downloads"),
                            quality=jpeg_quality, retry_failed=retry_failed, verify=verify)

    display = Progress(progress, prefix="fvlm precompute", unit="samples")
    bar = Tracker(display, f"{source_name} {part_text}")
    records: list[dict] = []
    planned: set[str] = set()
    t0 = time.time()
    complete = False
    try:
        runner = pool.run_inline if workers == 0 else pool.run_pool
        runner(tasks(), workers, bar, records, planned)
        complete = True
    finally:
        display.close()
        if complete:
            state.drop_stale(part_text, planned)
            state.finish(part)
        # interrupted, or complete after a worker died mid-shard (the pool restarts it): the half-written tars of
        # this part go now; every finished shard was renamed into place before its record was written
        state.clean_temporaries(prefix)
        _write_outputs(state, source_name, input, options, n)

    samples = sum(r["samples"] for r in records)
    failures = sum(len(r["failures"]) for r in records)
    seconds = time.time() - t0
    summary = {
        "source": source_name, "out_dir": str(out), "part": part_text, "samples": samples, "failures": failures,
        "fail_ratio": failures / max(samples + failures, 1), "frames": sum(frames_of(r) for r in records),
        "shards": len(records), "shards_resumed": sum(1 for r in records if r.get("resumed")),
        "seconds": seconds, "samples_per_s": (samples + failures) / max(seconds, 1e-9),
        "manifest": str(out / shard_format.MANIFEST), "failures_file": str(out / shard_format.FAILURES),
    }
    if progress:
        render_summary(summary)
    if failures and not samples:
        rows = [f for r in records for f in r["failures"]]
        error = DataError(all_failed_message(rows, out))
        error.summary = summary  # type: ignore[attr-defined]
        raise error
    if max_fail_ratio is not None and summary["fail_ratio"] > max_fail_ratio:
        error = DataError(f"{failures} of {samples + failures} samples failed ({summary['fail_ratio']:.1%}), over "
                        f"--max-fail-ratio {max_fail_ratio:g}; finished shards and the manifest are kept in {out} "
                        f"(reasons in {shard_format.FAILURES})")
        error.summary = summary  # type: ignore[attr-defined]  # the CLI still prints it with --json
        raise error
    return summary


def _write_outputs(state: State, source: str, input: Optional[str], options: dict, n: int) -> None:
    """manifest.json and failures.jsonl from the records of every part in the directory."""
    records = state.records()
    manifest = shard_format.build_manifest(records, source=source, input=input, options=options, n_parts=n,
                                           parts_complete=state.complete_parts())
    media: Counter = Counter()  # video / image / multi_image / frames / none
    for rec in records:
        media.update(rec["counts"].get("media", {}))
    manifest["counts"]["media"] = dict(sorted(media.items()))
    shard_format.write_json_atomic(state.out / shard_format.MANIFEST, manifest)
    rows = (f for rec in sorted(records, key=lambda r: r["name"]) for f in rec["failures"])
    shard_format.write_jsonl_atomic(state.out / shard_format.FAILURES, rows)




# failure reason (a regular expression) -> what the user can do about it
HINTS = [
    (r"^no caption|empty caption file", "`videos` needs a caption per file: a same-stem .txt beside each video "
     "(clip.mp4 + clip.txt), or --input a JSONL of {\"video\": PATH, \"caption\": TEXT} rows"),
    (r"is in no |is in neither |no such file|video file not found", "the videos are not where the annotations "
     "point: fetch the video archives too (a Hub id does), or give --input the dataset root as downloaded"),
    (r"HTTP \d+|timed out|connection|size cap", "downloads failed: check the network and the URLs, or raise "
     "--timeout / --retries / --max-download-mb"),
    (r"cannot decode|not a readable video|no video stream", "the media files do not decode: check they are whole "
     "(not partial downloads) and in a format FFmpeg reads"),
]


def _reason_kind(row: dict) -> str:
    reason = str(row.get("reason", ""))
    for value in (row.get("input"), row.get("id")):
        if value:
            reason = reason.replace(str(value), "<input>")
    return re.sub(r"\d+", "N", reason)


def all_failed_message(rows: list[dict], out: Path, top: int = 3) -> str:
    """One line for a run in which every input failed: the top reasons with counts, and what to do."""
    kinds = Counter(_reason_kind(r) for r in rows)
    shown = "; ".join(f"{n}x {kind}" for kind, n in kinds.most_common(top))
    hint = next((h for pattern, h in HINTS if any(re.search(pattern, str(r.get("reason", ""))) for r in rows)),
                f"every input and reason is in {out / shard_format.FAILURES}")
    return f"all {len(rows)} inputs failed, nothing was written (top reasons: {shown}). Hint: {hint}"
