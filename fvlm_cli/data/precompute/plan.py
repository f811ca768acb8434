"""Planning a precompute run (main process): which samples go to which shard, and the run state on disk.

- the source's samples are numbered in order (0, 1, 2, ...); `--part i/n` keeps those with index % n == i;
- kept samples are cut into shards of `shard_size` consecutive samples named
  `{source}-p{i:03d}of{n:03d}-{k:06d}.tar`, so the same command always plans the same shards;
- `.fvlm-state/` holds one run record per part and one record per finished shard (see `State`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from fvlm_cli.data import shards as shard_format
from fvlm_cli.data.download import FetchOptions
from fvlm_cli.data.sources.base import RawSample
from fvlm_cli.errors import DataError

STATE_DIR = ".fvlm-state"


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
    verify: bool = False                       # re-hash a finished shard even when its size and mtime match
    crashed: dict[int, str] = field(default_factory=dict)  # index -> reason: samples that killed a worker


def media_label(media: Any) -> Optional[str]:
    """A short name for media: its path, URL or archive member ("x.zip:data/a.mp4"), or a description."""
    if media is None:
        return None
    if isinstance(media, (str, os.PathLike)):
        return str(media)
    if isinstance(media, (list, tuple)):
        return f"<{len(media)} images: {', '.join(str(media_label(m)) for m in media[:4])}>"
    if type(media).__name__ == "Member":
        return str(media)
    if isinstance(media, (bytes, bytearray)):
        return f"<{len(media)} bytes sha1:{hashlib.sha1(media).hexdigest()[:12]}>"
    size = getattr(media, "size", None)
    return f"<{type(media).__name__} {size}>" if size is not None else f"<{type(media).__name__}>"


def input_label(raw: RawSample) -> Optional[str]:
    """What failures.jsonl calls a sample's input: as the user knows it (URL, archive member, the video a row
    names), never an internal path such as a cache extraction."""
    return raw.label or media_label(raw.media)


def plan_hash(items: list[tuple[int, RawSample]], media: dict, quality: int) -> str:
    h = hashlib.sha256(json.dumps([media, quality], sort_keys=True).encode())
    for index, raw in items:
        row = [index, raw.id, raw.source, raw.kind, raw.messages, media_label(raw.media), raw.media_kind,
               raw.label,
               raw.extra, raw.error]
        h.update(json.dumps(row, sort_keys=True, default=str).encode())
    return h.hexdigest()


def plan_shards(samples: Iterable[RawSample], part: tuple[int, int], shard_size: int) -> Iterator[tuple[int, list]]:
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

class State:
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




def frames_of(rec: dict) -> int:
    """Total frames a shard record holds."""
    return sum(int(k) * v for k, v in rec["frames"].items())
