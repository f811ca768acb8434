"""What a worker process does: decode the samples of one shard and write it (or verify and skip it)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from fvlm_cli.data import shards as shard_format
from fvlm_cli.data.download import fetch, is_url
from fvlm_cli.data.precompute.plan import STATE_DIR, ShardTask, frames_of, input_label, media_label
from fvlm_cli.data.sources.base import RawSample
from fvlm_cli.errors import DataError, FvlmError, storage_error

_progress_queue = None


def init_worker(progress_queue, parent_pid: int, decode_threads: int) -> None:
    global _progress_queue
    _progress_queue = progress_queue
    from fvlm_cli.data import video

    video.DECODE_THREADS = decode_threads  # one process per core: FFmpeg threads would oversubscribe the CPU
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


_RECORD_KEYS = {"chosen", "rejected", "question", "options", "answer", "category", "cluster"}


class _LastClip:
    """The last decoded media of a shard: a source lists its samples of one video together (caption, QA,
    preference pair), so each video is downloaded, decoded and JPEG-encoded once."""

    def __init__(self):
        self.key: Any = None
        self.value: Optional[tuple[list[float], list[bytes], str, Any]] = None

    def get(self, raw: RawSample, task: ShardTask) -> tuple[list[float], list[bytes], str, Any]:
        window = raw.extra.get("window")
        key = (media_label(raw.media), raw.media_kind, json.dumps(window))
        reusable = isinstance(raw.media, (str, os.PathLike)) or type(raw.media).__name__ == "Member"
        if reusable and key == self.key and self.value is not None:
            return self.value
        self.key, self.value = None, None
        clip = _load(raw, task, window)
        self.value = ([float(t) for t in clip.timestamps],
                      [shard_format.encode_jpeg(frame, task.quality) for frame in clip.frames],
                      "image" if clip.is_image else "video", clip.window)
        self.key = key
        return self.value


def _load(raw: RawSample, task: ShardTask, window):
    """The sample's media as a `Clip` (frames [T, S, S, 3] uint8): a URL downloaded first, an archive member
    read in place, several images stacked in order."""
    from fvlm_cli.data import archives
    from fvlm_cli.data.media import load_frames, load_images, load_media

    src, kind, downloaded = raw.media, raw.media_kind or "auto", None
    if isinstance(src, archives.Member):
        if src.is_dir:  # a frame folder inside a zip: only the picked frames are read
            names = archives.frame_members(src)
            frames = [lambda n=n: archives.read_member(src, n) for n in names]
            return load_frames(frames, window=window, name=str(src), **task.media)
        with archives.open_member(src) as f:
            return load_media(f, kind=kind, window=window, **task.media)
    if isinstance(src, (list, tuple)):
        return load_images(src, image_size=task.media["image_size"])
    if is_url(src):  # one folder per process: another worker may hold the same URL and delete its copy
        downloaded = fetch(src, Path(task.download_dir) / str(os.getpid()), timeout=task.fetch.timeout,
                           max_bytes=task.fetch.max_bytes, retries=task.fetch.retries, backoff=task.fetch.backoff,
                           max_seconds=task.fetch.max_seconds)
        src = downloaded
    try:
        return load_media(src, kind=kind, window=window, **task.media)
    except Exception as e:
        if downloaded is None:
            raise
        # name the URL the user gave, not the temporary download
        raise type(e)(_one_line(e).replace(str(downloaded), str(raw.media))) from None
    finally:
        if downloaded is not None:
            downloaded.unlink(missing_ok=True)  # the shard holds the frames; the download is not needed


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _decode(raw: RawSample, task: ShardTask, last: _LastClip) -> tuple[dict, list[bytes]]:
    """One sample -> (json record, JPEG frames). Raises on anything wrong with it."""
    if raw.error:
        raise DataError(raw.error)
    shard_format.check_sample(raw.id, raw.kind, raw.messages, raw.media, raw.extra)
    timestamps, jpegs, media_type, window = last.get(raw, task) if raw.media is not None else ([], [], None, None)
    meta = {k: v for k, v in raw.extra.items() if k not in _RECORD_KEYS and _jsonable(v)}
    if window is not None:
        meta["window"] = [float(window[0]), float(window[1])]  # the window actually sampled (clipped to the video)
    record = shard_format.sample_record(raw.id, raw.source, raw.kind, raw.messages, timestamps, raw.extra,
                                        media_type, meta)
    return record, jpegs


def media_count_key(raw: RawSample, record: dict) -> str:
    """How the manifest counts a sample's media: video | image | multi_image | frames | none."""
    if raw.media is None:
        return "none"
    if raw.media_kind == "images":
        return "multi_image"
    if raw.media_kind == "frames":
        return "frames"
    return record.get("media_type") or "video"


def _existing(task: ShardTask, record_path: Path) -> Optional[dict]:
    """The shard's record if it is finished and intact: same plan, and the tar present with the recorded size and
    either the recorded modification time (what rsync trusts) or, with `task.verify` or an older record without
    one, the recorded sha256."""
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
        if not tar.exists() or (st := tar.stat()).st_size != rec["bytes"]:
            return None
        unchanged = rec.get("mtime_ns") == st.st_mtime_ns and not task.verify
        if not unchanged and shard_format.sha256_file(tar) != rec["sha256"]:
            return None
    return rec


def write_shard(task: ShardTask) -> dict:
    """Write (or verify and skip) one shard; return its record. Runs in a worker process."""
    out = Path(task.out_dir)
    record_path = out / STATE_DIR / "shards" / f"{task.name}.json"
    rec = _existing(task, record_path)
    if rec is not None:
        _report("done", task.name, rec["samples"], len(rec["failures"]), frames_of(rec))
        return {**rec, "resumed": True}

    by_source: Counter = Counter()
    by_kind: Counter = Counter()
    by_media: Counter = Counter()
    frames_hist: Counter = Counter()
    failures: list[dict] = []
    last = _LastClip()
    with shard_format.ShardWriter(out / task.name, quality=task.quality) as writer:
        for index, raw in task.items:
            _report("start", task.name, index, os.getpid())
            try:
                if index in task.crashed:
                    raise DataError(task.crashed[index])
                record, jpegs = _decode(raw, task, last)
                writer.write_jpegs(shard_format.sample_key(index, raw.id), record, jpegs)
            except Exception as e:  # one bad input is recorded and skipped, never fatal
                if (full := storage_error(e)) is not None:  # disk full: the machine's fault, not the input's
                    raise full from None
                reason = _one_line(e)
                if raw.label and isinstance(raw.media, str):  # e.g. a cache extraction: name the archive member
                    reason = reason.replace(raw.media, raw.label)
                failures.append({"id": str(raw.id), "input": input_label(raw), "reason": reason})
                _report("done", task.name, 0, 1, 0)
                continue
            by_source[record["source"]] += 1
            by_kind[record["kind"]] += 1
            by_media[media_count_key(raw, record)] += 1
            frames_hist[record["frame_count"]] += 1
            _report("done", task.name, 1, 0, record["frame_count"])
        mtime_ns = None
        if writer.samples:
            info = writer.close()
            sha, size = info.sha256, info.bytes
            mtime_ns = (out / task.name).stat().st_mtime_ns
        else:  # every sample failed: no empty tar, the record alone says the shard is done
            writer.abort()
            (out / task.name).unlink(missing_ok=True)
            sha, size = None, 0
    rec = {
        "name": task.name, "part": task.part, "plan": task.plan, "samples": writer.samples, "sha256": sha,
        "bytes": size, "mtime_ns": mtime_ns, "first_index": task.items[0][0], "last_index": task.items[-1][0],
        "counts": {"source": dict(by_source), "kind": dict(by_kind), "media": dict(by_media)},
        "frames": {str(k): v for k, v in sorted(frames_hist.items())}, "failures": failures,
    }
    shard_format.write_json_atomic(record_path, rec)  # after the tar's rename: a record means a whole shard
    return rec


