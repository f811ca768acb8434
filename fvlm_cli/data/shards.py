"""The shard format (SPEC §3.2): WebDataset tar files, `manifest.json` and `failures.jsonl`.

One sample in a tar is a group of members sharing a key:

    {key}.000.jpg, {key}.001.jpg, ...   frames, JPEG, already cropped to image_size (none for text-only)
    {key}.json                          {"id", "source", "kind", "frame_count", "timestamps", "messages"}
                                        + "media_type": "image" | "video" (samples with media)
                                        + "chosen", "rejected" (dpo)
                                        + "question", "options", "answer", "category", "cluster" (mcq)

Text is stored as text, never token ids: a chat-template fix must not require re-running precompute.
Tars are written to a temporary name and renamed when complete, so a file named `*.tar` is never partial.
Reading is here too, for the loader, bench, caption and the tests alike: `stream_shard` (one shard, with
retries, from any position), `iter_shard_samples` (a whole set), `resolve_shards` (local, http(s), pipe:, hf://).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tarfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from fvlm_cli.errors import CorruptShard, DataError

FORMAT = "fvlm-shards/1"
KINDS = ("caption", "sft", "text", "dpo", "mcq")
ROLES = ("system", "user", "assistant")
DPO_KEYS = ("chosen", "rejected")
MCQ_KEYS = ("question", "options", "answer", "category", "cluster")
JPEG_QUALITY = 90
MANIFEST = "manifest.json"
FAILURES = "failures.jsonl"


# ---------------------------------------------------------------- writing

def sample_key(index: int, id: str) -> str:
    """The tar key of the `index`-th sample of a source: unique (the index) and readable (the id).

    WebDataset splits a member name at its first dot, so the key holds no dots or slashes.
    """
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", str(id)).strip("_")[:60]
    return f"{index:09d}-{safe}" if safe else f"{index:09d}"


def check_sample(id: str, kind: str, messages: Any, media: Any, extra: dict) -> None:
    """Raise `DataError` when a source's sample cannot become a valid §3.2 record."""
    if kind not in KINDS:
        raise DataError(f"unknown sample kind {kind!r} (expected one of {', '.join(KINDS)})")
    if not isinstance(messages, list) or not messages:
        raise DataError("sample has no messages")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"malformed message {str(m)[:80]!r} (need role in {ROLES} and string content)")
    if kind == "text" and media is not None:
        raise DataError("a text sample cannot have media")
    if kind in ("caption", "dpo") and media is None:  # mcq/sft may be text-only (e.g. ScienceQA without image)
        raise DataError(f"a {kind} sample needs a video or image")
    needed = DPO_KEYS if kind == "dpo" else MCQ_KEYS[:3] if kind == "mcq" else ()
    missing = [k for k in needed if extra.get(k) in (None, "")]
    if missing:
        raise DataError(f"{kind} sample lacks {', '.join(missing)}")


def sample_record(id: str, source: str, kind: str, messages: list[dict], timestamps: Sequence[float],
                  extra: Optional[dict] = None, media_type: Optional[str] = None,
                  meta: Optional[dict] = None) -> dict:
    """The sample's `json` member: the §3.2 keys for its kind, plus "media_type" ("image" | "video") for
    samples with media: the loader replicates images to `image_frames`, and a one-frame video is not an image.
    `meta`: the source's own fields that evaluation or filtering reads (Video-MME duration/domain/sub_category,
    the MVBench window sampled, Cauldron subset, ...), kept as "meta" when given and not empty.
    """
    extra = extra or {}
    record = {
        "id": str(id),
        "source": source,
        "kind": kind,
        "frame_count": len(timestamps),
        "timestamps": [round(float(t), 3) for t in timestamps],
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
    }
    if media_type is not None:
        record["media_type"] = media_type
    if kind == "dpo":
        record.update({k: extra[k] for k in DPO_KEYS})
    if kind == "mcq":
        record.update({k: extra.get(k) for k in MCQ_KEYS})
        if record["category"] is None:
            record["category"] = ""
        if record["cluster"] is None:  # standard errors are clustered by video; default: the sample itself
            record["cluster"] = str(id)
    if meta:
        record["meta"] = meta
    return record


def encode_jpeg(frame, quality: int = JPEG_QUALITY) -> bytes:
    """[S, S, 3] uint8 RGB -> JPEG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@dataclass
class ShardInfo:
    name: str       # file name inside the output directory
    samples: int
    sha256: str
    bytes: int


class ShardWriter:
    """Writes one tar under a temporary name; `close()` publishes it atomically and returns its `ShardInfo`.

    Members get fixed owner/mode/mtime, so the same samples always give the same bytes (and sha256).
    """

    def __init__(self, path: str | Path, quality: int = JPEG_QUALITY):
        self.path = Path(path)
        self.tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
        self.quality = quality
        self.samples = 0
        self._file = open(self.tmp, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o444
        info.mtime = 0
        info.uname = info.gname = "fvlm"
        self._tar.addfile(info, io.BytesIO(data))

    def write(self, key: str, record: dict, frames: Sequence = ()) -> None:
        """Add one sample: `frames` [T, S, S, 3] uint8 (or a list of such arrays) and its json record."""
        self.write_jpegs(key, record, [encode_jpeg(frame, self.quality) for frame in frames])

    def write_jpegs(self, key: str, record: dict, jpegs: Sequence[bytes]) -> None:
        """Add one sample whose frames are already JPEG-encoded (several samples of one video share them)."""
        if len(jpegs) != record["frame_count"]:
            raise ValueError(f"{key}: {len(jpegs)} frames but frame_count {record['frame_count']}")
        for t, data in enumerate(jpegs):
            self._add(f"{key}.{t:03d}.jpg", data)
        self._add(f"{key}.json", json.dumps(record, ensure_ascii=False).encode("utf-8"))
        self.samples += 1

    def close(self) -> ShardInfo:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        return ShardInfo(self.path.name, self.samples, sha256_file(self.path), self.path.stat().st_size)

    def abort(self) -> None:
        """Drop the temporary file: nothing is published."""
        try:
            self._tar.close()
            self._file.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not self._file.closed:
            self.abort()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON to a temporary file and rename it over `path` (readers never see half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------- manifest

def fvlm_version() -> str:
    try:
        import fvlm_cli

        version = getattr(fvlm_cli, "__version__", None)
        if version:
            return str(version)
    except ImportError:  # pragma: no cover
        pass
    try:
        from importlib.metadata import version as _v

        return _v("fvlm")
    except Exception:
        return "unknown"


def build_manifest(shard_records: Sequence[dict], *, source: str, input: Optional[str], options: dict,
                   n_parts: int, parts_complete: Sequence[int]) -> dict:
    """Aggregate the per-shard records of a run (one or several parts) into `manifest.json`.

    A shard record holds: name, part, samples, sha256, bytes, counts {source: {}, kind: {}},
    frames {frame_count: samples}, failures [{"id", "input", "reason"}].
    """
    by_source: Counter = Counter()
    by_kind: Counter = Counter()
    frames: Counter = Counter()
    failures = 0
    shards = []
    for rec in sorted(shard_records, key=lambda r: r["name"]):
        by_source.update(rec["counts"]["source"])
        by_kind.update(rec["counts"]["kind"])
        frames.update({int(k): v for k, v in rec["frames"].items()})
        failures += len(rec["failures"])
        if rec["samples"]:
            shards.append({"name": rec["name"], "path": rec["name"], "part": rec["part"],
                           "samples": rec["samples"], "sha256": rec["sha256"], "bytes": rec["bytes"]})
    parts = sorted({rec["part"] for rec in shard_records})
    return {
        "format": FORMAT,
        "fvlm_version": fvlm_version(),
        "source": source,
        "input": input,
        "options": options,
        "part": parts[0] if len(parts) == 1 else None,  # "i/n" when the directory holds one part
        "parts": {"n": n_parts, "complete": sorted(parts_complete)},
        "complete": len(set(parts_complete)) == n_parts,
        "samples": sum(s["samples"] for s in shards),
        "failures": failures,
        "counts": {"source": dict(sorted(by_source.items())), "kind": dict(sorted(by_kind.items()))},
        "frames_histogram": {str(k): frames[k] for k in sorted(frames)},
        "shards": shards,
    }


def read_manifest(directory: str | Path) -> dict:
    """`manifest.json` of a shard directory; `DataError` when it is missing or unreadable."""
    path = Path(directory)
    if path.is_dir():
        path = path / MANIFEST
    if not path.exists():
        raise DataError(f"no {MANIFEST} in {path.parent} (run `fvlm precompute` into it first)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or "shards" not in manifest:
        raise DataError(f"{path}: not an fvlm shard manifest")
    return manifest


def shard_paths(path_or_dir: str | Path) -> list[Path]:
    """The tar files of a shard directory (from its manifest when present, else `*.tar`), or one tar."""
    path = Path(path_or_dir)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"shard path not found: {path}")
    if (path / MANIFEST).exists():
        return [path / s["path"] for s in read_manifest(path)["shards"]]
    return sorted(path.glob("*.tar"))


# ---------------------------------------------------------------- reading (the one shard reader)

_FRAME_RE = re.compile(r"^(\d+)\.(jpg|jpeg|png)$")


@dataclass(frozen=True)
class ShardSample:
    """One sample as stored: its shard, key, position in the shard, json bytes and frame bytes (in order).

    `record` is None when the json member is missing; `error` says why the sample is unusable (corrupt)."""

    shard: str
    key: str
    ordinal: int
    json_bytes: Optional[bytes]
    frames: tuple[bytes, ...]

    @property
    def error(self) -> Optional[str]:
        if self.json_bytes is None:
            return "no json member"
        try:
            json.loads(self.json_bytes)
        except ValueError as e:
            return f"unreadable json ({e})"
        return None


def _sample_of(url: str, ordinal: int, raw: dict) -> ShardSample:
    frames = sorted((int(m.group(1)), data) for ext, data in raw.items()
                    if isinstance(ext, str) and (m := _FRAME_RE.match(ext)))
    return ShardSample(url, raw["__key__"], ordinal, raw.get("json"), tuple(d for _, d in frames))


class _Hashing:
    """A read-through stream wrapper that hashes what passes (sha256 check of a streamed shard)."""

    def __init__(self, stream):
        self.stream, self.h = stream, hashlib.sha256()

    def read(self, *args):
        data = self.stream.read(*args)
        self.h.update(data)
        return data

    def drain(self) -> str:
        while self.read(1 << 20):
            pass
        return self.h.hexdigest()


def stream_shard(url: str, access: Any = None, *, start: int = 0, expected: Optional[int] = None,
                 sha256: Optional[str] = None) -> Iterator[ShardSample]:
    """The samples of one shard from position `start` on, read with webdataset's tar iterators.

    Transient failures (HTTP 5xx, resets, a stream that ends early) are retried `access.retries` times with
    exponential backoff; a retry reopens the shard and skips the samples already yielded. Then a one-line
    DataError naming the shard. `expected` (manifest count): fewer samples than that is a truncated stream.
    """
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    from fvlm_cli.data import remote

    access = access or remote.ShardAccess()
    local = remote.cached(url, access, sha256)
    src = str(local) if local is not None else url
    next_ordinal, attempt = start, 0
    log = logging.getLogger("fvlm.data")
    while True:
        stream = None
        try:
            stream = remote.open_raw(src, access)
            hashing = _Hashing(stream) if (access.verify and sha256 and local is None) else None
            files = tar_file_iterator(hashing or stream)
            ordinal, held = 0, None
            # a sample is passed on only once the next one has begun (or the stream ended cleanly): a stream cut
            # at a member boundary would otherwise hand out its last sample with members missing
            for raw in group_by_keys({**f, "__url__": url} for f in files):
                if held is not None:
                    yield held
                    next_ordinal = held.ordinal + 1
                held = _sample_of(url, ordinal, raw) if ordinal >= next_ordinal else None
                ordinal += 1
            digest = hashing.drain() if hashing else None
            stream.close()  # a pipe / curl reports its exit status here
            if expected is not None and ordinal < expected:
                raise remote.TransientError(f"stream ended after {ordinal} of {expected} samples")
            if digest is not None and digest != sha256:
                raise remote.TransientError(f"sha256 mismatch (manifest {sha256[:12]}..., got {digest[:12]}...)")
            if held is not None:
                yield held
            return
        except DataError:
            raise
        except Exception as e:
            reason, transient, corrupt = remote.describe_failure(src, e, stream)
            if corrupt and not remote.is_remote(src):
                transient = False  # a local (or cached) file reads the same bytes again: no retry
            attempt += 1
            if not transient or attempt > access.retries:
                tries = f" after {attempt} attempts" if attempt > 1 else ""
                raise (CorruptShard if corrupt else DataError)(f"shard {remote.shown(url)}: {reason}{tries}") from None
            delay = access.backoff * 2 ** (attempt - 1)
            log.warning("shard %s: %s; retry %d/%d in %.1f s (from sample %d)", remote.shown(url), reason, attempt,
                        access.retries, delay, next_ordinal)
            time.sleep(delay)
        finally:
            remote.close_quietly(stream)


def resolve_shards(spec: str | Path, access: Any = None):
    """A shard set (`remote.ShardSetRef`): a local directory (its manifest.json list, else *.tar, else
    shards/*.tar), a tar, a glob, a brace pattern, an http(s):// pattern, a `pipe:` command or an
    `hf://datasets/OWNER/NAME/PATTERN`. Sorted; DataError if empty or a named shard is missing."""
    import glob

    from fvlm_cli.data import remote

    spec = str(spec)
    if remote.is_remote(spec):
        return remote.resolve_remote(spec, access or remote.ShardAccess())
    if re.match(r"^(s3|gs|gcs|az|abfs)://", spec):
        scheme = spec.split(":", 1)[0]
        raise DataError(f"{scheme}:// shard sets are read through their command line tool or an https URL: "
                        f"pipe:{'aws s3 cp' if scheme == 's3' else 'gcloud storage cat' if scheme in ('gs', 'gcs') else 'azcopy copy'} "
                        f"{spec} -  (see the README's table of shard locations)")
    path = Path(spec).expanduser()
    ref = remote.ShardSetRef(spec, [])
    if path.is_dir():
        ref.urls = [str(p) for p in shard_paths(path)]
        if not ref.urls and (path / "shards").is_dir():
            ref.urls = [str(p) for p in sorted((path / "shards").glob("*.tar"))]
        missing = [p for p in ref.urls if not os.path.isfile(p)]
        if missing:
            raise DataError(f"{path}: manifest lists {len(missing)} missing shard(s), e.g. {missing[0]}")
        if (path / MANIFEST).exists():
            for entry in read_manifest(path)["shards"]:
                url = str(path / entry["path"])
                if "samples" in entry:
                    ref.counts[url] = int(entry["samples"])
                if entry.get("sha256"):
                    ref.sha256[url] = entry["sha256"]
    elif path.is_file():
        ref.urls = [str(path)]
    else:
        for pattern in remote.expand_braces(spec):
            hits = sorted(glob.glob(os.path.expanduser(pattern)))
            if not hits and not re.search(r"[*?\[]", pattern) and "{" in spec:
                raise DataError(f"shard {pattern} (from {spec}) does not exist")
            ref.urls += hits
        ref.urls = sorted(set(ref.urls))
    if not ref.urls:
        raise DataError(f"no shards found at {spec!r} (a shard directory, a .tar, a glob, a brace pattern, "
                        f"an http(s):// pattern, pipe:COMMAND or hf://datasets/OWNER/NAME/PATTERN)")
    return ref


def discover_shards(spec: str | Path) -> list[str]:
    """The shard URLs / paths of a shard set (see `resolve_shards`)."""
    return resolve_shards(spec).urls


def iter_shard_samples(path_or_dir: str | Path, *, decode: str = "pil", access: Any = None,
                       skipped: Optional[list] = None) -> Iterator[dict]:
    """Yield the samples of a shard set (any form `resolve_shards` takes) in stored order.

    Each item: {"__key__", "__shard__", "json": dict, "frames": [PIL.Image] (decode="pil"),
    [S, S, 3] uint8 arrays (decode="numpy") or JPEG bytes (decode="bytes")}. A sample without a readable
    json is skipped (appended to `skipped` when given, as "shard: key: reason") rather than stopping the read.
    A local directory without shards yields nothing (the caller says what it expected there).
    """
    local = Path(str(path_or_dir)).expanduser()
    if local.is_dir() and not shard_paths(local) and not list(local.glob("shards/*.tar")):
        return
    ref = resolve_shards(path_or_dir, access)
    for url in ref.urls:
        for s in stream_shard(url, access, expected=ref.counts.get(url), sha256=ref.sha256.get(url)):
            if s.error:
                logging.getLogger("fvlm.data").warning("%s: sample %s skipped: %s", url, s.key, s.error)
                if skipped is not None:
                    skipped.append(f"{url}: {s.key}: {s.error}")
                continue
            record = json.loads(s.json_bytes)
            if decode == "bytes":
                frames: list = list(s.frames)
            else:
                from PIL import Image

                frames = [Image.open(io.BytesIO(b)).convert("RGB") for b in s.frames]
                if decode == "numpy":
                    import numpy as np

                    frames = [np.asarray(f) for f in frames]
            yield {"__key__": s.key, "__shard__": url, "json": record, "frames": frames}


def index_shard(url: str) -> tuple[ShardSample, ...]:
    """Every sample of one shard, in memory (small sets: bench, tools). Training streams with `stream_shard`."""
    return tuple(stream_shard(url))


def read_record(sample: ShardSample) -> dict:
    if sample.error:
        raise DataError(f"{sample.shard}: sample {sample.key}: {sample.error}")
    return json.loads(sample.json_bytes)


def decode_frames(sample: ShardSample, image_size: int):
    """[T, S, S, 3] uint8 from the sample's JPEGs (T = 0 for text-only); DataError on a wrong size."""
    import numpy as np
    from PIL import Image

    frames = []
    for data in sample.frames:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        if img.size != (image_size, image_size):
            raise DataError(f"{sample.shard}: sample {sample.key} has {img.size[0]}x{img.size[1]} frames but the "
                            f"model reads {image_size}x{image_size}; precompute with that image size or set "
                            f"model.image_size")
        frames.append(np.asarray(img))
    if not frames:
        return np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    return np.stack(frames)
