"""What `fvlm bench` has to do and what it has done: shard reading, question ids, ranks, samples.jsonl, resume.

Shards are read only through `fvlm_cli.data.shards.iter_shard_samples`: one pass (`index_items`) collects every
sample's json record (frames dropped), a second pass (`iter_todo`) streams the JPEGs of the samples still to
score, in stored order, so memory holds one batch of frames at a time.

Ranks (`fvlm bench --gpus N`, torchrun): question i of a benchmark (after --limit) belongs to rank i % N.
Single process: rows are appended to `samples.jsonl`. Rank r of N appends to `parts/samples.rank<r>.jsonl`.
Every process reads `samples.jsonl` and all part files as done, so a run resumes under any N. At the end rank
0 rewrites `samples.jsonl` in canonical order (`canonical_rows`) and removes the parts, so the file is the same
whatever N was (up to `seconds`).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from fvlm_cli.errors import DataError

PARTS = "parts"


# ---------------------------------------------------------------- ranks

@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mine(self, i: int) -> bool:
        return i % self.world == self.rank

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def ranks_from_env() -> Ranks:
    """The process's rank under torchrun (initialising the process group once: nccl on GPUs, gloo on CPU or
    with FVLM_BACKEND=gloo); rank 0 of 1 otherwise."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    r = Ranks(int(os.environ.get("RANK", 0)), world, int(os.environ.get("LOCAL_RANK", 0)))
    if world > 1:
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and os.environ.get("FVLM_BACKEND") != "gloo" else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(r.local)
            dist.init_process_group(backend, timeout=timedelta(hours=12))  # ranks wait for rank 0's val-loss
    return r


# ---------------------------------------------------------------- samples.jsonl

def _read_rows(path: Path, repair: bool = False) -> list[dict]:
    """The rows of a jsonl file; a half-written last line (a kill mid-write) is dropped (and cut off if repair)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        if repair:
            with open(path, "r+b") as f:
                f.truncate(keep)
        data = data[:keep]
    rows = []
    for line in data.decode("utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def row_key(row: dict) -> tuple:
    return row["benchmark"], row["mode"], row["method"], row["id"]


def load_rows(out: Path) -> dict[tuple, dict]:
    """Every row written so far: samples.jsonl, then the rank part files (first occurrence of a key wins)."""
    rows: dict[tuple, dict] = {}
    files = [out / "samples.jsonl", *sorted((out / PARTS).glob("samples.rank*.jsonl"))]
    for f in files:
        for row in _read_rows(f):
            rows.setdefault(row_key(row), row)
    return rows


class SampleStore:
    """Append-only rows keyed (benchmark, mode, method, id); earlier rows are never rewritten here."""

    def __init__(self, out: Path, ranks: Optional[Ranks] = None):
        ranks = ranks or Ranks()
        self.out = Path(out)
        if ranks.world == 1:
            self.path = self.out / "samples.jsonl"
        else:
            (self.out / PARTS).mkdir(exist_ok=True)
            self.path = self.out / PARTS / f"samples.rank{ranks.rank}.jsonl"
        _read_rows(self.path, repair=True)  # cut a partial last line before appending
        self.rows = load_rows(self.out)
        self._f = open(self.path, "a", encoding="utf-8")

    key = staticmethod(row_key)

    def done(self, *key) -> bool:
        return tuple(key) in self.rows

    def get(self, *key) -> Optional[dict]:
        return self.rows.get(tuple(key))

    def add(self, rows: Sequence[dict]) -> None:
        """Append rows (skipping keys already stored) and flush: one call per question."""
        for row in rows:
            k = row_key(row)
            if k in self.rows:
                continue
            self.rows[k] = row
            self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()

    def reload(self) -> None:
        """Pick up what the other ranks wrote."""
        self.rows = load_rows(self.out)

    def close(self) -> None:
        self._f.close()


def canonical_rows(rows: dict[tuple, dict], plan: Sequence[tuple[str, Sequence[str]]], modes: Sequence[str],
                   methods: Sequence[str]) -> list[dict]:
    """Rows in canonical order: per planned benchmark, per question, per mode, per method; then every other
    row (questions or benchmarks outside this run) in stored order."""
    out, used = [], set()
    all_methods = list(methods) + ["loss"]
    for bench, uids in plan:
        for uid in uids:
            for m in modes:
                for me in all_methods:
                    k = (bench, m, me, uid)
                    if k in rows and k not in used:
                        out.append(rows[k])
                        used.add(k)
    out += [r for k, r in rows.items() if k not in used]
    return out


def finalise(out: Path, plan, modes, methods) -> None:
    """Rank 0 after every rank is done: samples.jsonl rewritten in canonical order, the part files removed."""
    rows = canonical_rows(load_rows(out), plan, modes, methods)
    tmp = out / "samples.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, out / "samples.jsonl")
    parts = out / PARTS
    if parts.is_dir():
        for p in parts.glob("samples.rank*.jsonl"):
            p.unlink()
        try:
            parts.rmdir()
        except OSError:
            pass


# ---------------------------------------------------------------- reading shards

@dataclass
class Item:
    uid: str        # unique within the benchmark ("#k" appended to the k-th repeat of an id)
    shard: str
    key: str
    record: dict


def index_items(path: Path, kind: str, bench: str, unreadable: Optional[list] = None) -> list[Item]:
    """The samples of `kind` in the shards at `path`, in stored order, with unique ids (frames not kept).
    `unreadable` collects a line per sample the shard reader had to skip (no or garbled json)."""
    from fvlm_cli.data.shards import iter_shard_samples

    out, seen, kinds = [], {}, {}
    for s in iter_shard_samples(path, decode="bytes", skipped=unreadable):
        rec = s["json"]
        k = rec.get("kind", "?")
        kinds[k] = kinds.get(k, 0) + 1
        if k != kind:
            continue
        sid = str(rec.get("id", s["__key__"]))
        n = seen.get(sid, 0)
        seen[sid] = n + 1
        out.append(Item(sid if n == 0 else f"{sid}#{n}", s["__shard__"], s["__key__"], rec))
    if not out:
        found = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())) or "no samples"
        raise DataError(f"{bench}: the shards at {path} hold no {kind} samples ({found}); "
                        f"give the {bench} shards with --data {bench}=DIR")
    return out


def count_samples(path: Path) -> int:
    from fvlm_cli.data.shards import iter_shard_samples

    return sum(1 for _ in iter_shard_samples(path, decode="bytes"))


def decode_jpegs(jpegs: Sequence[bytes], image_size: int, where: str) -> np.ndarray:
    """[T, S, S, 3] uint8 from a sample's JPEGs (T = 0 for text-only); DataError on a size the model cannot read."""
    from PIL import Image

    frames = []
    for data in jpegs:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        if img.size != (image_size, image_size):
            raise DataError(f"{where} has {img.size[0]}x{img.size[1]} frames but the model reads "
                            f"{image_size}x{image_size}; precompute with that image size or set model.image_size")
        frames.append(np.asarray(img))
    if not frames:
        return np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    return np.stack(frames)


@dataclass
class BrokenFrames:
    """In place of a sample's frames when they cannot be decoded: the runners record the question as excluded."""

    reason: str


def precompute_failures(path: Path) -> int:
    """How many inputs `fvlm precompute` could not turn into samples for the shards at `path` (its failures.jsonl),
    so a result can say that its questions are fewer than the benchmark's."""
    from fvlm_cli.data.shards import FAILURES

    f = Path(path) / FAILURES
    if not f.is_file():
        return 0
    with open(f, encoding="utf-8", errors="replace") as fh:
        return sum(1 for line in fh if line.strip())


def iter_todo(path: Path, todo: Sequence[Item], batch_size: int,
              image_size: int) -> Iterator[list[tuple[Item, "np.ndarray | BrokenFrames"]]]:
    """Batches of (item, frames [T, S, S, 3] uint8) for `todo` (a subsequence of `index_items`), in stored order;
    `BrokenFrames` instead of frames for a sample whose frames do not decode."""
    from fvlm_cli.data.shards import iter_shard_samples

    if not todo:
        return
    wanted = {(it.shard, it.key): it for it in todo}
    chunk: list = []
    left = len(wanted)
    for s in iter_shard_samples(path, decode="bytes"):
        it = wanted.get((s["__shard__"], s["__key__"]))
        if it is None:
            continue
        try:
            frames = decode_jpegs(s["frames"], image_size, f"{it.shard}: sample {it.key}")
        except DataError:  # frames of another size: the whole set is precomputed wrong, stop and say so
            raise
        except Exception as e:  # one broken frame: this question is excluded (recorded), never the bench's end
            frames = BrokenFrames(f"unreadable frames ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
        chunk.append((it, frames))
        left -= 1
        if len(chunk) >= max(1, batch_size):
            yield chunk
            chunk = []
        if left == 0:
            break
    if chunk:
        yield chunk
