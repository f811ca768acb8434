"""The precompute driver: source samples -> decoded, sampled, cropped frames -> shards (SPEC §3.2, §3.3).

How a run is laid out, so that it is deterministic, splittable and resumable:
- the source's samples are numbered in order (0, 1, 2, ...); `--part i/n` keeps those with index % n == i;
- kept samples are cut into shards of `shard_size` consecutive samples named
  `{source}-p{i:03d}of{n:03d}-{k:06d}.tar`, so the same command always plans the same shards;
- worker processes decode media (`load_media`, URLs through `download.fetch`) and write whole shards;
  a shard is published by an atomic rename, then recorded in `.fvlm-state/shards/{name}.json`
  (samples, sha256, counts, failures). A re-run skips a shard whose record, plan and sha256 match, so a
  killed run resumes without duplicating or losing a sample;
- `manifest.json` and `failures.jsonl` are rebuilt from the records of every part in the directory, so
  parts run on several machines into one shared directory add up to one manifest (two parts finishing at
  the same instant may each miss the other's last shard in it: re-running any part, which resumes
  everything at once, rewrites it complete).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from fvlm_cli.config import field as cfg_field
from fvlm_cli.data import shards as shard_format
from fvlm_cli.data.download import FetchOptions, fetch, is_url
from fvlm_cli.data.sources import get_source
from fvlm_cli.data.sources.base import RawSample, SourceOptions
from fvlm_cli.errors import DataError, FvlmError

STATE_DIR = ".fvlm-state"
MAX_POOL_RESTARTS = 20  # a worker crash (decoder segfault, OOM kill) restarts the pool at most this often


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def parse_part(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n; `DataError` otherwise."""
    try:
        i_text, n_text = str(text).split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise DataError(f"--part expects i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise DataError(f"--part {text}: need 0 <= i < n (parts are numbered 0..n-1)")
    return i, n


def shard_name(source: str, part: tuple[int, int], k: int) -> str:
    i, n = part
    return f"{source}-p{i:03d}of{n:03d}-{k:06d}.tar"


# ---------------------------------------------------------------- planning (main process)

@dataclass
class ShardTask:
    """One shard to write: everything a worker needs, picklable."""

    name: str
    part: str                                  # "i/n"
    out_dir: str
    items: list[tuple[int, RawSample]]         # (source index, sample)
    plan: str                                  # hash of what this shard must contain
    media: dict[str, Any]                      # fps, max_frames, image_size
    fetch: FetchOptions
    download_dir: str
    quality: int = shard_format.JPEG_QUALITY
    retry_failed: bool = False
    crashed: dict[int, str] = field(default_factory=dict)  # index -> reason: samples that killed a worker


def media_label(media: Any) -> Optional[str]:
    """What failures.jsonl calls a sample's input: its path or URL, or a short description."""
    if media is None:
        return None
    if isinstance(media, (str, os.PathLike)):
        return str(media)
    if isinstance(media, (bytes, bytearray)):
        return f"<{len(media)} bytes sha1:{hashlib.sha1(media).hexdigest()[:12]}>"
    size = getattr(media, "size", None)
    return f"<{type(media).__name__} {size}>" if size is not None else f"<{type(media).__name__}>"


def _plan_hash(items: list[tuple[int, RawSample]], media: dict, quality: int) -> str:
    h = hashlib.sha256(json.dumps([media, quality], sort_keys=True).encode())
    for index, raw in items:
        row = [index, raw.id, raw.source, raw.kind, raw.messages, media_label(raw.media), raw.media_kind,
               raw.extra, raw.error]
        h.update(json.dumps(row, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _plan(samples: Iterable[RawSample], part: tuple[int, int], shard_size: int) -> Iterator[tuple[int, list]]:
    """(k, [(index, sample), ...]) for each shard of this part, in order."""
    i, n = part
    chunk: list[tuple[int, RawSample]] = []
    k = 0
    for index, raw in enumerate(samples):
        if index % n != i:
            continue
        chunk.append((index, raw))
        if len(chunk) == shard_size:
            yield k, chunk
            k, chunk = k + 1, []
    if chunk:
        yield k, chunk


# ---------------------------------------------------------------- run state

class _State:
    """`.fvlm-state/`: one run record per part (options, complete?) and one record per finished shard."""

    def __init__(self, out: Path):
        self.out = out
        self.dir = out / STATE_DIR
        self.shards = self.dir / "shards"

    def create(self) -> None:
        self.shards.mkdir(parents=True, exist_ok=True)

    def run_path(self, part: tuple[int, int]) -> Path:
        return self.dir / f"run-p{part[0]:03d}of{part[1]:03d}.json"

    def check_options(self, source: str, fingerprint: dict) -> None:
        """A directory holds one run (all its parts): different options would mix incompatible shards."""
        for path in sorted(self.dir.glob("run-p*.json")) if self.dir.is_dir() else []:
            old = json.loads(path.read_text())
            if old.get("source") != source:
                raise DataError(f"{self.out} holds {old.get('source')!r} shards; use another --out for {source!r}")
            prev = old.get("fingerprint", {})
            for key in sorted(set(prev) | set(fingerprint)):
                if prev.get(key) != fingerprint.get(key):
                    raise DataError(
                        f"{self.out} holds shards made with {key}={prev.get(key)!r}, not {fingerprint.get(key)!r}; "
                        "re-run with the same options to resume, or use another --out")

    def start(self, part: tuple[int, int], run: dict) -> None:
        shard_format.write_json_atomic(self.run_path(part), {**run, "complete": False, "started": time.time()})

    def finish(self, part: tuple[int, int]) -> None:
        path = self.run_path(part)
        run = json.loads(path.read_text())
        shard_format.write_json_atomic(path, {**run, "complete": True, "finished": time.time()})

    def complete_parts(self) -> list[int]:
        done = []
        for path in self.dir.glob("run-p*.json"):
            run = json.loads(path.read_text())
            if run.get("complete"):
                done.append(int(run["part"].split("/")[0]))
        return done

    def records(self) -> list[dict]:
        out = []
        for path in sorted(self.shards.glob("*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except ValueError:  # written atomically, so only a foreign file can be unreadable
                continue
        return out

    def clean_temporaries(self, prefix: str) -> None:
        """Remove half-written shards of this part left by a killed run (never counted as finished)."""
        for path in self.out.glob(f"{prefix}*.tar.tmp*"):
            path.unlink(missing_ok=True)

    def drop_stale(self, part: str, planned: set[str]) -> None:
        """After a complete run: shards of this part that the plan no longer has (the source shrank)."""
        for rec in self.records():
            if rec.get("part") == part and rec["name"] not in planned:
                (self.out / rec["name"]).unlink(missing_ok=True)
                (self.shards / f"{rec['name']}.json").unlink(missing_ok=True)


# ---------------------------------------------------------------- workers

_progress_queue = None


def _init_worker(progress_queue, parent_pid: int, decode_threads: int) -> None:
    global _progress_queue
    _progress_queue = progress_queue
    from fvlm_cli.data import media

    media.DECODE_THREADS = decode_threads  # one process per core: FFmpeg threads would oversubscribe the CPU
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle; it stops the workers

    def watch_parent() -> None:  # a SIGKILLed driver must not leave workers behind
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch_parent, daemon=True).start()


def _report(*message) -> None:
    if _progress_queue is not None:
        _progress_queue.put(message)


def _one_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    if isinstance(e, FvlmError):
        return text or type(e).__name__
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class _LastClip:
    """The last decoded media of a shard: a source lists its samples of one video together (caption, QA,
    preference pair), so each video is downloaded, decoded and JPEG-encoded once."""

    def __init__(self):
        self.key: Any = None
        self.value: Optional[tuple[list[float], list[bytes], str]] = None

    def get(self, raw: RawSample, task: ShardTask) -> tuple[list[float], list[bytes], str]:
        key = (media_label(raw.media), raw.media_kind)
        if isinstance(raw.media, (str, os.PathLike)) and key == self.key and self.value is not None:
            return self.value
        self.key, self.value = None, None
        clip = _load(raw, task)
        self.value = ([float(t) for t in clip.timestamps],
                      [shard_format.encode_jpeg(frame, task.quality) for frame in clip.frames],
                      "image" if clip.is_image else "video")
        self.key = key
        return self.value


def _load(raw: RawSample, task: ShardTask):
    """The sample's media as a `Clip` (frames [T, S, S, 3] uint8), downloading a URL first."""
    from fvlm_cli.data.media import load_media

    src, downloaded = raw.media, None
    if is_url(src):  # one folder per process: another worker may hold the same URL and delete its copy
        downloaded = fetch(src, Path(task.download_dir) / str(os.getpid()), timeout=task.fetch.timeout, max_bytes=task.fetch.max_bytes,
                           retries=task.fetch.retries, backoff=task.fetch.backoff)
        src = downloaded
    try:
        return load_media(src, kind=raw.media_kind or "auto", **task.media)
    finally:
        if downloaded is not None:
            downloaded.unlink(missing_ok=True)  # the shard holds the frames; the download is not needed


def _decode(raw: RawSample, task: ShardTask, last: _LastClip) -> tuple[dict, list[bytes]]:
    """One sample -> (json record, JPEG frames). Raises on anything wrong with it."""
    if raw.error:
        raise DataError(raw.error)
    shard_format.check_sample(raw.id, raw.kind, raw.messages, raw.media, raw.extra)
    timestamps, jpegs, media_type = last.get(raw, task) if raw.media is not None else ([], [], None)
    record = shard_format.sample_record(raw.id, raw.source, raw.kind, raw.messages, timestamps, raw.extra,
                                        media_type)
    return record, jpegs


def _existing(task: ShardTask, record_path: Path) -> Optional[dict]:
    """The shard's record if it is finished and intact (same plan, tar present with the recorded sha256)."""
    if not record_path.exists():
        return None
    try:
        rec = json.loads(record_path.read_text())
    except ValueError:
        return None
    if rec.get("plan") != task.plan or (task.retry_failed and rec.get("failures")):
        return None
    if rec["samples"]:
        tar = Path(task.out_dir) / task.name
        if not tar.exists() or tar.stat().st_size != rec["bytes"] or shard_format.sha256_file(tar) != rec["sha256"]:
            return None
    return rec


def write_shard(task: ShardTask) -> dict:
    """Write (or verify and skip) one shard; return its record. Runs in a worker process."""
    out = Path(task.out_dir)
    record_path = out / STATE_DIR / "shards" / f"{task.name}.json"
    rec = _existing(task, record_path)
    if rec is not None:
        _report("done", task.name, rec["samples"], len(rec["failures"]), _frames(rec))
        return {**rec, "resumed": True}

    by_source: Counter = Counter()
    by_kind: Counter = Counter()
    frames_hist: Counter = Counter()
    failures: list[dict] = []
    last = _LastClip()
    with shard_format.ShardWriter(out / task.name, quality=task.quality) as writer:
        for index, raw in task.items:
            _report("start", task.name, index)
            try:
                if index in task.crashed:
                    raise DataError(task.crashed[index])
                record, jpegs = _decode(raw, task, last)
                writer.write_jpegs(shard_format.sample_key(index, raw.id), record, jpegs)
            except Exception as e:  # one bad input is recorded and skipped, never fatal
                failures.append({"id": str(raw.id), "input": media_label(raw.media), "reason": _one_line(e)})
                _report("done", task.name, 0, 1, 0)
                continue
            by_source[record["source"]] += 1
            by_kind[record["kind"]] += 1
            frames_hist[record["frame_count"]] += 1
            _report("done", task.name, 1, 0, record["frame_count"])
        if writer.samples:
            info = writer.close()
            sha, size = info.sha256, info.bytes
        else:  # every sample failed: no empty tar, the record alone says the shard is done
            writer.abort()
            (out / task.name).unlink(missing_ok=True)
            sha, size = None, 0
    rec = {
        "name": task.name, "part": task.part, "plan": task.plan, "samples": writer.samples, "sha256": sha,
        "bytes": size, "first_index": task.items[0][0], "last_index": task.items[-1][0],
        "counts": {"source": dict(by_source), "kind": dict(by_kind)},
        "frames": {str(k): v for k, v in sorted(frames_hist.items())}, "failures": failures,
    }
    shard_format.write_json_atomic(record_path, rec)  # after the tar's rename: a record means a whole shard
    return rec


# ---------------------------------------------------------------- progress

class _Progress:
    """Rich bar on a terminal, a plain log line every `every` seconds otherwise, nothing when disabled."""

    def __init__(self, label: str, enabled: bool, every: float = 10.0):
        self.enabled, self.label, self.every = enabled, label, every
        self.ok = self.failed = self.frames = 0
        self.shards_done = 0
        self.total: Optional[int] = None
        self.t0 = time.time()
        self._last_log = self.t0
        self._bar = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("[red]{task.fields[failed]} failed"),
                                 TextColumn("{task.fields[rate]} samples/s"), TimeElapsedColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(label, total=None, failed=0, rate="-")

    def rate(self) -> float:
        return (self.ok + self.failed) / max(time.time() - self.t0, 1e-6)

    def update(self, ok: int = 0, failed: int = 0, frames: int = 0, shard_done: bool = False) -> None:
        self.ok += ok
        self.failed += failed
        self.frames += frames
        self.shards_done += int(shard_done)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.ok + self.failed, total=self.total, failed=self.failed,
                             rate=f"{self.rate():.1f}")
        elif self.enabled and time.time() - self._last_log >= self.every:
            self._last_log = time.time()
            self._log()

    def _log(self) -> None:
        seen = self.ok + self.failed
        total = f"/{self.total}" if self.total is not None else ""
        eta = ""
        if self.total and seen:
            eta = f", ETA {max(self.total - seen, 0) / max(self.rate(), 1e-9):.0f} s"
        print(f"[fvlm precompute] {self.label}: {seen}{total} samples, {self.failed} failed, "
              f"{self.rate():.1f} samples/s, {self.shards_done} shards done{eta}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.ok + self.failed, total=self.total or self.ok + self.failed)
            self._bar.stop()
        elif self.enabled:
            self._log()


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


# ---------------------------------------------------------------- config

@dataclass
class DownloadConfig:
    timeout: float = cfg_field(30.0, help="seconds of silence (connect/read) before a download attempt is abandoned")
    max_mb: float = cfg_field(512.0, help="size cap per downloaded file (MiB); bigger files are failures")
    retries: int = cfg_field(3, help="extra attempts after a 5xx/429, a timeout or a dropped connection")
    backoff: float = cfg_field(1.0, help="seconds before the first retry, doubled each time")


@dataclass
class PrecomputeConfig:
    """Everything `fvlm precompute` reads (YAML via --config, flags, --set)."""

    source: str = cfg_field("", help="source name (see `fvlm precompute --help`)")
    input: Optional[str] = cfg_field(None, help="local path or Hub dataset id (synthetic: none)")
    out: str = cfg_field("", help="output directory: *.tar, manifest.json, failures.jsonl")
    workers: Optional[int] = cfg_field(None, help="decoding processes (default min(4, cpus); 0 = in-process)")
    part: str = cfg_field("0/1", help="i/n: keep samples whose index % n == i (split across machines)")
    fps: float = cfg_field(1.0, help="frames sampled per second of video")
    max_frames: int = cfg_field(64, help="cap; longer videos are sampled uniformly over their whole length")
    image_size: int = cfg_field(224, help="shorter side resized to this, then centre-cropped square")
    shard_size: int = cfg_field(1000, help="samples per tar")
    limit: Optional[int] = cfg_field(None, help="use only the first N samples of the source (before --part)")
    seed: int = cfg_field(0, help="seed for sources that sample or generate")
    split: Optional[str] = cfg_field(None, help="dataset split/subset where the source has several")
    cache_dir: Optional[str] = cfg_field(None, help="where downloads and Hub snapshots go")
    max_fail_ratio: Optional[float] = cfg_field(None, help="fail (exit 2) when failures / samples exceeds this")
    retry_failed: bool = cfg_field(False, help="redo finished shards that recorded failures")
    jpeg_quality: int = cfg_field(shard_format.JPEG_QUALITY, help="JPEG quality of stored frames")
    download: DownloadConfig = cfg_field(None, help="http(s) fetching of media URLs")
    extra: dict[str, Any] = cfg_field({}, help="source-specific knobs (--set key=value)")

    def __post_init__(self):
        if self.download is None:
            self.download = DownloadConfig()


def run_config(cfg: PrecomputeConfig, progress: bool = True) -> dict:
    """`run_precompute` from a `PrecomputeConfig` (what the CLI calls)."""
    if not cfg.out:
        raise DataError("--out is required: the directory the shards go to")
    opts = SourceOptions(fps=cfg.fps, max_frames=cfg.max_frames, image_size=cfg.image_size, limit=cfg.limit,
                         seed=cfg.seed, cache_dir=cfg.cache_dir, split=cfg.split, extra=dict(cfg.extra))
    fetch_options = FetchOptions(timeout=cfg.download.timeout, max_bytes=int(cfg.download.max_mb * 2**20),
                                 retries=cfg.download.retries, backoff=cfg.download.backoff)
    return run_precompute(cfg.source, cfg.input, cfg.out, workers=cfg.workers, part=parse_part(cfg.part),
                          opts=opts, shard_size=cfg.shard_size, max_fail_ratio=cfg.max_fail_ratio,
                          progress=progress, fetch_options=fetch_options, jpeg_quality=cfg.jpeg_quality,
                          retry_failed=cfg.retry_failed)


# ---------------------------------------------------------------- driver

def run_precompute(source_name: str, input: Optional[str], out_dir: str | os.PathLike, *,
                   workers: Optional[int] = None, part: tuple[int, int] = (0, 1),
                   opts: Optional[SourceOptions] = None, shard_size: int = 1000,
                   max_fail_ratio: Optional[float] = None, progress: bool = True,
                   fetch_options: Optional[FetchOptions] = None, jpeg_quality: int = shard_format.JPEG_QUALITY,
                   retry_failed: bool = False) -> dict:
    """Turn one source into shards in `out_dir`; return a summary dict (see `render_summary`).

    workers: decoding processes (default min(4, cpus)); 0 decodes in this process (debugging).
    part: (i, n) keeps the samples whose index % n == i. opts: media policy and source knobs.
    max_fail_ratio: after the run, raise `DataError` if failures / samples seen exceeds it (shards and
    manifest are kept). retry_failed: redo finished shards that recorded failures (e.g. after a network outage).
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
    state = _State(out)
    input_key = str(Path(input).expanduser().resolve()) if input and Path(input).expanduser().exists() else input
    media = {"fps": float(opts.fps), "max_frames": int(opts.max_frames), "image_size": int(opts.image_size)}
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
        for k, items in _plan(samples, part, shard_size):
            yield ShardTask(name=shard_name(source_name, part, k), part=part_text, out_dir=str(out), items=items,
                            plan=_plan_hash(items, media, jpeg_quality), media=media, fetch=fetch_options,
                            download_dir=str(Path(opts.cache_dir or out / STATE_DIR) / "downloads"),
                            quality=jpeg_quality, retry_failed=retry_failed)

    bar = _Progress(f"{source_name} {part_text}", progress)
    records: list[dict] = []
    planned: set[str] = set()
    t0 = time.time()
    complete = False
    try:
        runner = _run_inline if workers == 0 else _run_pool
        runner(tasks(), workers, bar, records, planned)
        complete = True
    finally:
        bar.close()
        if complete:
            state.drop_stale(part_text, planned)
            state.finish(part)
        else:  # interrupted: the stopped workers' half-written tars go now (a re-run would remove them anyway)
            state.clean_temporaries(prefix)
        _write_outputs(state, source_name, input, options, n)

    samples = sum(r["samples"] for r in records)
    failures = sum(len(r["failures"]) for r in records)
    seconds = time.time() - t0
    summary = {
        "source": source_name, "out_dir": str(out), "part": part_text, "samples": samples, "failures": failures,
        "fail_ratio": failures / max(samples + failures, 1), "frames": sum(_frames(r) for r in records),
        "shards": len(records), "shards_resumed": sum(1 for r in records if r.get("resumed")),
        "seconds": seconds, "samples_per_s": (samples + failures) / max(seconds, 1e-9),
        "manifest": str(out / shard_format.MANIFEST), "failures_file": str(out / shard_format.FAILURES),
    }
    if progress:
        render_summary(summary)
    if max_fail_ratio is not None and summary["fail_ratio"] > max_fail_ratio:
        error = DataError(f"{failures} of {samples + failures} samples failed ({summary['fail_ratio']:.1%}), over "
                        f"--max-fail-ratio {max_fail_ratio:g}; finished shards and the manifest are kept in {out} "
                        f"(reasons in {shard_format.FAILURES})")
        error.summary = summary  # type: ignore[attr-defined]  # the CLI still prints it with --json
        raise error
    return summary


def _write_outputs(state: _State, source: str, input: Optional[str], options: dict, n: int) -> None:
    """manifest.json and failures.jsonl from the records of every part in the directory."""
    records = state.records()
    manifest = shard_format.build_manifest(records, source=source, input=input, options=options, n_parts=n,
                                           parts_complete=state.complete_parts())
    shard_format.write_json_atomic(state.out / shard_format.MANIFEST, manifest)
    rows = (f for rec in sorted(records, key=lambda r: r["name"]) for f in rec["failures"])
    shard_format.write_jsonl_atomic(state.out / shard_format.FAILURES, rows)


def _frames(rec: dict) -> int:
    return sum(int(k) * v for k, v in rec["frames"].items())


def _handle_message(msg: tuple, bar: _Progress, started: dict[str, int]) -> None:
    if msg[0] == "start":
        started[msg[1]] = msg[2]
    else:
        bar.update(ok=msg[2], failed=msg[3], frames=msg[4])


def _run_inline(tasks: Iterator[ShardTask], workers: int, bar: _Progress, records: list, planned: set) -> None:
    global _progress_queue
    local: queue.SimpleQueue = queue.SimpleQueue()
    _progress_queue = local
    try:
        for task in tasks:
            planned.add(task.name)
            rec = write_shard(task)
            while not local.empty():
                _handle_message(local.get(), bar, {})
            records.append(rec)
            bar.update(shard_done=True)
        bar.total = bar.ok + bar.failed
    finally:
        _progress_queue = None


def _run_pool(tasks: Iterator[ShardTask], workers: int, bar: _Progress, records: list, planned: set) -> None:
    """Keep `workers` processes busy with shards (a few queued ahead); survive crashing workers."""
    ctx = mp.get_context("spawn")  # no fork: the driver may hold threads (progress bar) and open files
    threads = max(1, (os.cpu_count() or 1) // workers)
    started: dict[str, int] = {}         # shard name -> index of the sample its worker is decoding
    suspects: Counter = Counter()        # (shard, index) -> times a worker died while on it
    pending: dict[str, ShardTask] = {}   # submitted, not finished
    futures: dict = {}                   # future -> shard name
    task_iter = iter(tasks)
    exhausted = False
    restarts = 0

    def new_pool() -> tuple[ProcessPoolExecutor, Any]:
        # SimpleQueue writes synchronously (no feeder thread): a worker's "start" message is in the pipe
        # before a crash in that sample can kill it, so the driver knows which sample to suspect. A fresh
        # queue per pool: a killed worker may have died holding the old one's lock.
        messages = ctx.SimpleQueue()
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(messages, os.getpid(), threads))
        return pool, messages

    def drain(messages) -> None:
        while not messages.empty():
            _handle_message(messages.get(), bar, started)

    pool, messages = new_pool()
    try:
        while True:
            # one shard queued per worker beyond the running ones: tasks carry their samples (image bytes too)
            while not exhausted and len(futures) < workers + 1:
                task = next(task_iter, None)
                if task is None:
                    exhausted = True
                    bar.total = sum(len(t.items) for t in pending.values()) + sum(
                        r["samples"] + len(r["failures"]) for r in records)
                    break
                planned.add(task.name)
                pending[task.name] = task
                futures[pool.submit(write_shard, task)] = task.name
            if not futures:
                break
            done, _ = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
            drain(messages)
            broken = False
            for fut in done:
                try:
                    rec = fut.result()
                except BrokenProcessPool:
                    broken = True
                    continue
                name = futures.pop(fut)
                records.append(rec)
                pending.pop(name, None)
                started.pop(name, None)
                bar.update(shard_done=True)
            if not broken:
                continue
            # a worker died (decoder segfault, OOM kill): every shard in flight starts again in a new pool;
            # the sample a shard was on is suspect, and a sample suspected twice is recorded as a failure
            restarts += 1
            if restarts > MAX_POOL_RESTARTS:
                raise DataError(f"worker processes crashed {restarts} times; stopping (finished shards are kept)")
            pool.shutdown(wait=False, cancel_futures=True)
            pool, messages = new_pool()
            names = list(futures.values())
            futures = {}
            for name in names:
                task = pending[name]
                if name in started:
                    key = (name, started.pop(name))
                    suspects[key] += 1
                    if suspects[key] >= 2:
                        task.crashed[key[1]] = "the worker process died while decoding this input (twice)"
                futures[pool.submit(write_shard, task)] = name
            # restarted shards report their samples again from the first one
            bar.ok = sum(r["samples"] for r in records)
            bar.failed = sum(len(r["failures"]) for r in records)
    except BaseException:
        _terminate(pool)
        raise
    pool.shutdown(wait=True)


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Stop the workers now (Ctrl-C, fatal error): a half-written shard stays a temporary file."""
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(timeout=2.0)
