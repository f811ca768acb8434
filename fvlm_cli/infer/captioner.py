"""Dataset-scale captioning: background decoding, batched generation, results appended as they finish.

    units (infer.inputs) -> DecodeStream in DataLoader workers -> batches of `batch_size` -> generate_clips
                         -> one record per input -> `emit` (ResultWriter: --out JSONL, stdout, failures, progress)

- Decoding runs in `workers` DataLoader processes with `prefetch` clips ready each, so the model does not wait
  for video decode (`Summary.wait_s` measures how long it did).
- A bad input is one error record: a decode error comes back from the worker as a record, and a batch whose
  generation raises is re-run one input at a time, so only the input that fails is lost.
- `--out FILE.jsonl`: each finished caption is appended (and flushed) at once; a re-run reads the file and skips
  every input already captioned there (failed inputs are retried). Failures of the run go to FILE.failures.jsonl.
- `--gpus N`: the units are dealt round-robin to N processes, one per device (spawned; `--device cpu` gives N CPU
  processes), which send their records back to this process, the only writer.
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import queue
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from fvlm_cli.errors import FvlmError, storage_error, worker_error_message
from fvlm_cli.infer.core import clip_tensor, generate_clips, load_clip
from fvlm_cli.infer.inputs import ShardUnit, done_key, shard_input


@dataclass
class Decoded:
    input: str
    clip: Optional[torch.Tensor] = None
    prompt: Optional[str] = None
    extra: dict = field(default_factory=dict)
    error: Optional[str] = None
    skipped: Optional[str] = None
    unit: int = -1          # index of its unit in the DecodeStream's list
    last: bool = False      # a shard's end marker: no record, the shard is done


@dataclass
class Summary:
    captioned: int = 0
    failed: int = 0
    skipped: int = 0
    wait_s: float = 0.0     # the model's time waiting for decoded inputs
    model_s: float = 0.0    # time spent generating
    wall_s: float = 0.0

    def add(self, other: "Summary") -> None:
        for k in ("captioned", "failed", "skipped", "wait_s", "model_s"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.wall_s = max(self.wall_s, other.wall_s)


def _error_text(e: BaseException, name: str = "") -> str:
    """One line; without the input's own name in front (the record names the input)."""
    text = str(e) if isinstance(e, FvlmError) else f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    return text[len(name) + 2:] if name and text.startswith(f"{name}: ") else text


def _debug_trace() -> None:
    """`fvlm --debug`: the traceback of an isolated failure goes to stderr too."""
    if os.environ.get("FVLM_DEBUG") == "1":
        import traceback

        traceback.print_exc()


class DecodeStream(torch.utils.data.IterableDataset):
    """Decoded inputs of `units` (worker w takes units w, w+n, ...); done inputs are skipped; each shard ends with a
    `last` marker (no record), so the main process knows it need not read that tar again.

    slots: a shared array of three floats per worker: the unit it is decoding (-1: none), the sample of a shard it
    is on, and since when; so the main process can tell which input a worker died or hung on (the DataLoader only
    says that a worker failed). bad: {(shard path, sample number): reason}, samples not to decode again."""

    def __init__(self, units: list, done: frozenset, media_cfg, image_size: int, slots=None, bad: Optional[dict] = None):
        self.units, self.done, self.media_cfg, self.image_size = units, done, media_cfg, image_size
        self.slots, self.bad = slots, bad or {}

    def _mark(self, wid: int, k: int, sample: int = 0) -> None:
        if self.slots is not None:
            self.slots[3 * wid], self.slots[3 * wid + 1], self.slots[3 * wid + 2] = k, sample, time.time()

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, n = (info.id, info.num_workers) if info is not None else (0, 1)
        for k in range(wid, len(self.units), n):
            unit = self.units[k]
            if isinstance(unit, ShardUnit):
                yield from self._shard(unit, k, wid)
                continue
            self._mark(wid, k)
            try:
                d = Decoded(unit.input, load_clip(unit.path, self.media_cfg, self.image_size), unit.prompt, unit.extra,
                            unit=k)
            except Exception as e:  # one unreadable file is that file's error record, never the run's
                if (full := storage_error(e)) is not None:  # disk full: the machine's fault, not the file's
                    raise full from None
                _debug_trace()
                d = Decoded(unit.input, prompt=unit.prompt, extra=unit.extra, error=_error_text(e, unit.path), unit=k)
            self._mark(wid, -1)
            yield d

    def _shard(self, unit: ShardUnit, k: int, wid: int):
        from PIL import Image

        from fvlm_cli.data.shards import iter_shard_samples

        i = 0
        self._mark(wid, k, i)  # reading the next sample of the tar counts as decoding it
        try:
            for i, s in enumerate(iter_shard_samples(unit.path, decode="bytes")):
                self._mark(wid, k, i)
                name = shard_input(unit.path, s["__key__"])
                rec = s["json"]
                if done_key(name, rec.get("id")) in self.done:
                    continue
                extra = {"id": rec["id"]} if rec.get("id") is not None else {}
                if (unit.path, i) in self.bad:
                    d = Decoded(name, extra=extra, error=self.bad[(unit.path, i)], unit=k)
                elif not s["frames"]:
                    d = Decoded(name, extra=extra, skipped="text-only sample", unit=k)
                else:
                    try:
                        frames = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in s["frames"]])
                        is_image = rec.get("media_type") == "image" or (rec.get("media_type") is None and len(frames) == 1)
                        d = Decoded(name, clip_tensor(frames, self.media_cfg, self.image_size, is_image), extra=extra,
                                    unit=k)
                    except Exception as e:
                        d = Decoded(name, extra=extra, error=f"cannot decode its frames ({_error_text(e)})", unit=k)
                self._mark(wid, -1)
                yield d
                self._mark(wid, k, i + 1)
        except Exception as e:  # a corrupt or truncated tar: the rest of it is lost, other shards go on
            self._mark(wid, -1)
            if done_key(unit.path, None) not in self.done:
                yield Decoded(unit.path, error=f"cannot read shard ({_error_text(e)})", unit=k)
        self._mark(wid, -1)
        yield Decoded(unit.path, unit=k, last=True)


def _identity(x):
    return x


def _records(lm, batch: list[Decoded], g) -> list[dict]:
    """Generate for `batch` (all decoded); on an exception, retry one input at a time so only the culprit fails."""
    try:
        outs = generate_clips(lm, [d.clip for d in batch], [d.prompt or g.prompt for d in batch], mode=g.mode,
                              max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p,
                              repetition_penalty=g.repetition_penalty, order=g.order, seed=g.seed)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        if _loader_failure(e) is not None:  # torch's SIGCHLD handler raised it here: a worker died, not this batch
            raise
        if len(batch) == 1:
            _debug_trace()
            return [{"input": batch[0].input, **batch[0].extra, "error": f"generation failed: {_error_text(e)}"}]
        return [r for d in batch for r in _records(lm, [d], g)]
    rows = []
    for d, o in zip(batch, outs):
        row = {"input": d.input, **d.extra, "mode": o.mode, "text": o.text, "frames": o.frames,
               "seconds": round(o.seconds, 3), "first_token_s": round(o.first_token_s, 3)}
        if d.prompt:
            row["prompt"] = d.prompt
        rows.append(row)
    return rows


MAX_STALLED_RESTARTS = 10  # decoder crashes or hangs in a row with no record in between before the run stops


def _loader_failure(e: BaseException) -> Optional[str]:
    """'died' or 'hung' when `e` is the DataLoader saying a worker process failed; None for anything else."""
    text = str(e)
    if "DataLoader worker" in text and ("exited unexpectedly" in text or "killed by signal" in text):
        return "died"
    if "DataLoader timed out" in text:
        return "hung"
    return None


def _culprits(it, slots, failure: str, timeout: float) -> list[tuple[int, int]]:
    """(unit, sample) the failed workers were on (positions in the stream's list): a dead worker's, or those decoded
    for `timeout` seconds or more. A dead worker that was between inputs blames nobody; only when the worker
    processes cannot be seen is every busy worker's input suspect."""
    busy = {w: (int(slots[3 * w]), int(slots[3 * w + 1])) for w in range(len(slots) // 3) if slots[3 * w] >= 0}
    if failure == "died":
        procs = getattr(it, "_workers", None)  # DataLoader's worker processes, in worker-id order
        if procs:
            return [busy[w] for w, p in enumerate(procs) if p.exitcode is not None and w in busy]
        return list(busy.values())
    now = time.time()
    late = [at for w, at in busy.items() if now - slots[3 * w + 2] >= timeout * 0.9]
    return late or list(busy.values())


def caption_units(lm, units: list, cfg, emit: Callable[[dict], None], done: frozenset = frozenset()) -> Summary:
    """Caption every input of `units` not in `done` on one device; `emit` gets one record per input, in input
    order for files: {"input", "text", ...}, {"input", "error"} or {"input", "skipped"}.

    A decoder that crashes its worker process (a segfault, an OOM kill) or takes longer than `cfg.decode_timeout`
    on one input costs only that input: the DataLoader starts again on the inputs not yet captioned, and an input
    (a file, or one sample of a shard) a worker failed on twice becomes an error record."""
    summary = Summary()
    t_start = time.perf_counter()
    if not units:
        return summary
    workers = max(0, int(cfg.workers))
    timeout = float(cfg.decode_timeout or 0) if workers else 0.0
    pending: list[Decoded] = []
    seen = set(done)             # done keys, plus every shard sample emitted by this run (a restart skips them)
    finished: set[int] = set()   # indices into `units` with every record emitted (a shard: its end marker came)
    left = list(range(len(units)))
    suspects: Counter = Counter()  # (index into units, sample) -> times a worker died or hung on it
    bad: dict = {}               # (shard path, sample) -> reason: shard samples not to decode again
    order: list[int] = []        # the current stream's positions -> indices into `units`
    stalled = 0

    def flush():
        ok = [d for d in pending if d.clip is not None]
        t0 = time.perf_counter()
        rows = iter(_records(lm, ok, cfg.generate) if ok else [])
        summary.model_s += time.perf_counter() - t0
        recs = []
        for d in pending:
            if d.skipped:
                recs.append((d, {"input": d.input, **d.extra, "skipped": d.skipped}))
            elif d.error:
                recs.append((d, {"input": d.input, **d.extra, "error": d.error}))
            else:
                recs.append((d, next(rows)))
        for d, rec in recs:  # each one leaves `pending` once emitted: an interrupted flush is finished by the next
            if "error" in rec:
                summary.failed += 1
            elif "skipped" in rec:
                summary.skipped += 1
            elif "text" in rec:
                summary.captioned += 1
            emit(rec)
            seen.add(done_key(d.input, d.extra.get("id")))
            if not isinstance(units[order[d.unit]], ShardUnit):
                finished.add(order[d.unit])
            pending.pop(0)  # `d` (records are made and emitted in pending's order)

    while left:
        order = list(left)
        stream_units = [units[i] for i in order]
        slots = mp.RawArray("d", [-1.0, 0.0, 0.0] * workers) if workers else None
        loader = torch.utils.data.DataLoader(
            DecodeStream(stream_units, frozenset(seen), lm.media, lm.model.image_size, slots, dict(bad)),
            batch_size=None, num_workers=workers, prefetch_factor=max(1, cfg.prefetch) if workers else None,
            collate_fn=_identity, timeout=timeout)
        emitted_before = summary.captioned + summary.failed + summary.skipped
        it = iter(loader)
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    d = next(it)
                except StopIteration:
                    break
                summary.wait_s += time.perf_counter() - t0
                if d.last:
                    finished.add(order[d.unit])
                    continue
                pending.append(d)
                if sum(x.clip is not None for x in pending) >= max(1, cfg.batch_size):
                    flush()
            flush()
            break
        except FvlmError as e:  # raised in a worker (a full disk): its own one line, not the worker's traceback
            raise type(e)(worker_error_message(e)) from None
        except RuntimeError as e:
            failure = _loader_failure(e)
            if failure is None or slots is None:
                raise
            culprits = _culprits(it, slots, failure, timeout)
            shutdown = getattr(it, "_shutdown_workers", None)  # now, not when the traceback lets go of `it`
            if shutdown is not None:
                shutdown()
            del it
            flush()
        what = ("its decoder process died on it" if failure == "died"
                else f"decoding took longer than --decode-timeout {timeout:g} s")
        for pos, sample in culprits:
            index = order[pos]
            unit = units[index]
            suspects[(index, sample)] += 1
            if suspects[(index, sample)] < 2 or index in finished:
                continue
            if isinstance(unit, ShardUnit) and suspects[(index, sample)] == 2:
                bad[(unit.path, sample)] = f"{what} (twice)"  # skipped on the next pass; the rest of the shard goes on
                continue
            finished.add(index)  # a file, or a shard that fails even around its bad sample: not tried again
            name, extra = (unit.path, {}) if isinstance(unit, ShardUnit) else (unit.input, dict(unit.extra))
            summary.failed += 1
            emit({"input": name, **extra, "error": f"{what} (twice)" if not isinstance(unit, ShardUnit) else
                  f"{what} (three times); the rest of the shard is skipped"})
        left = [i for i in order if i not in finished]
        progressed = summary.captioned + summary.failed + summary.skipped > emitted_before  # error records count
        stalled = 0 if progressed else stalled + 1
        if stalled > MAX_STALLED_RESTARTS:
            raise FvlmError(f"decoder processes failed {stalled} times in a row without a record; stopping "
                            f"(finished captions are kept)")
    summary.wall_s = time.perf_counter() - t_start
    return summary


# ---------------------------------------------------------------- one writer

def failures_path(out: Path) -> Path:
    return out.with_name(out.name[: -len(".jsonl")] + ".failures.jsonl" if out.name.endswith(".jsonl")
                         else out.name + ".failures.jsonl")


def read_done(out: Optional[Path]) -> frozenset:
    """Inputs already captioned in `out`, by `done_key` (a line cut short by a kill is ignored: that input runs
    again)."""
    if out is None or not out.exists():
        return frozenset()
    done = set()
    with open(out, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "input" in rec and "text" in rec:
                done.add(done_key(rec["input"], rec.get("id"), rec.get("prompt")))
    return frozenset(done)


def json_line(rec: dict) -> str:
    """One JSONL line, UTF-8 where it can be; a file name that is not valid UTF-8 (Linux hands it over with
    surrogate escapes) is written \\u-escaped instead of stopping the run, and reads back to the same name."""
    line = json.dumps(rec, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(rec)
    return line + "\n"


class ResultWriter:
    """Appends captions to `out` as they come, failures to its .failures.jsonl, and tells `show` about each record
    (the command renders it); advances `progress` (label "captions")."""

    def __init__(self, out: Optional[Path], show: Callable[[dict], None], progress=None):
        self.out, self.show, self.progress = out, show, progress
        self._f = self._fail = None
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            if out.exists() and out.stat().st_size:
                with open(out, "rb") as f:  # a run killed mid-line: start on a fresh line
                    f.seek(-1, os.SEEK_END)
                    tail = f.read(1)
                if tail != b"\n":
                    with open(out, "ab") as f:
                        f.write(b"\n")
            self._f = open(out, "a", encoding="utf-8")
        self._stale_failures = out is not None  # the last run's list goes once this run has a record to write
        # (a run that dies before, loading the model say, leaves it as it was)

    def __call__(self, rec: dict) -> None:
        if self._stale_failures:
            failures_path(self.out).unlink(missing_ok=True)
            self._stale_failures = False
        if "text" in rec and self._f is not None:
            self._f.write(json_line(rec))
            self._f.flush()
        if "error" in rec and self.out is not None:
            if self._fail is None:
                self._fail = open(failures_path(self.out), "a", encoding="utf-8")
            self._fail.write(json_line(rec))
            self._fail.flush()
        self.show(rec)
        if self.progress is not None:
            self.progress.advance("captions", 1, failed=int("error" in rec))

    def close(self) -> None:
        for f in (self._f, self._fail):
            if f is not None:
                f.close()


# ---------------------------------------------------------------- several devices

def device_names(device: str, n: int) -> list[str]:
    """N device names for `--gpus N`: cuda:0..N-1 (auto/cuda), or N times cpu (`--device cpu`)."""
    if device == "cpu":
        return ["cpu"] * n
    if not torch.cuda.is_available():
        raise FvlmError(f"--gpus {n}: CUDA is not available here (add --device cpu to split across CPU processes)")
    if torch.cuda.device_count() < n:
        raise FvlmError(f"--gpus {n}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return [f"cuda:{i}" for i in range(n)]


def _device_main(rank: int, spec: str, device: str, dtype: str, units: list, cfg, done: frozenset, q) -> None:
    try:
        if device == "cpu":  # N processes share the cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, cfg.gpus)))
        from fvlm_cli.model.build import load_model

        lm = load_model(spec, device=device, dtype=dtype)
        summary = caption_units(lm, units, cfg, lambda rec: q.put(("rec", rec)), done)
        q.put(("done", summary))
    except FvlmError as e:
        q.put(("fatal", str(e)))
    except BaseException as e:  # reported by the parent as this device's failure
        q.put(("fatal", f"device {rank} ({device}): {_error_text(e)}"))


def caption_on_devices(spec: str, devices: list[str], dtype: str, units: list, cfg, emit: Callable[[dict], None],
                       done: frozenset = frozenset()) -> Summary:
    """Deal `units` round-robin to one spawned process per device; their records come back to `emit` here."""
    ctx = torch.multiprocessing.get_context("spawn")
    q = ctx.Queue()
    # not daemonic: each device process starts its own DataLoader workers
    procs = [ctx.Process(target=_device_main, args=(r, spec, d, dtype, units[r::len(devices)], cfg, done, q))
             for r, d in enumerate(devices)]
    for p in procs:
        p.start()
    summary, fatal, finished = Summary(), [], 0
    try:
        while finished < len(procs):
            try:
                kind, payload = q.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if len(dead) + finished >= len(procs) and dead:
                    fatal.append(f"a device process died (exit code {dead[0].exitcode})")
                    break
                continue
            if kind == "rec":
                emit(payload)
            else:
                finished += 1
                if kind == "done":
                    summary.add(payload)
                else:
                    fatal.append(payload)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    if fatal:
        raise FvlmError(fatal[0])
    return summary
