"""The crash-tolerant worker pool that writes shards, and its progress counts (`fvlm_cli.progress.Progress`).

Workers are spawned processes, each writing whole shards; a worker that dies (decoder segfault, OOM kill)
restarts the pool and every shard in flight; the sample the dead worker was on is suspect, and a sample
suspected twice is recorded as a failure instead of being tried again. (Only the dead worker's sample: the
shards in flight restart together, so a healthy shard's sample can be in flight at two crashes of another.)
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Iterator

from fvlm_cli.data.precompute import worker
from fvlm_cli.data.precompute.plan import ShardTask
from fvlm_cli.errors import DataError
from fvlm_cli.progress import Progress

MAX_STALLED_RESTARTS = 10  # worker crashes in a row with no shard finished and no input given up on in between


class Tracker:
    """Samples done / failed of one run, drawn by the shared `Progress` display."""

    def __init__(self, progress: Progress, label: str):
        self.progress, self.label = progress, label
        self.ok = self.failed = 0
        progress.add(label)

    def update(self, ok: int = 0, failed: int = 0) -> None:
        self.ok += ok
        self.failed += failed
        if ok or failed:
            self.progress.advance(self.label, ok + failed, failed=failed)

    def set_total(self, total: int) -> None:
        self.progress.set_total(self.label, total)

    def reset(self, ok: int, failed: int) -> None:
        """Back to what finished shards hold (restarted shards report their samples again)."""
        task = self.progress.tasks[self.label]
        task.done, task.failed = ok + failed, failed
        self.ok, self.failed = ok, failed


def _handle_message(msg: tuple, bar: Tracker, started: dict[str, tuple]) -> None:
    if msg[0] == "start":  # ("start", shard, sample index, worker pid)
        started[msg[1]] = (msg[2], msg[3])
    else:
        bar.update(ok=msg[2], failed=msg[3])


def run_inline(tasks: Iterator[ShardTask], workers: int, bar: Tracker, records: list, planned: set) -> None:
    local: queue.SimpleQueue = queue.SimpleQueue()
    worker._progress_queue = local
    try:
        for task in tasks:
            planned.add(task.name)
            rec = worker.write_shard(task)
            while not local.empty():
                _handle_message(local.get(), bar, {})
            records.append(rec)
        bar.set_total(bar.ok + bar.failed)
    finally:
        worker._progress_queue = None


def run_pool(tasks: Iterator[ShardTask], workers: int, bar: Tracker, records: list, planned: set) -> None:
    """Keep `workers` processes busy with shards (a few queued ahead); survive crashing workers."""
    ctx = mp.get_context("spawn")  # no fork: the driver may hold threads (progress bar) and open files
    threads = max(1, (os.cpu_count() or 1) // workers)
    started: dict[str, tuple] = {}       # shard name -> (index of the sample its worker is decoding, worker pid)
    suspects: Counter = Counter()        # (shard, index) -> times a worker died while on it
    pending: dict[str, ShardTask] = {}   # submitted, not finished
    futures: dict = {}                   # future -> shard name
    task_iter = iter(tasks)
    exhausted = False
    stalled, progress = 0, -1  # restarts in a row without progress; finished shards + inputs given up on at the last
    procs: dict = {}                     # pid -> worker Process of the current pool

    def new_pool() -> tuple[ProcessPoolExecutor, Any]:
        # SimpleQueue writes synchronously (no feeder thread): a worker's "start" message is in the pipe
        # before a crash in that sample can kill it, so the driver knows which sample to suspect. A fresh
        # queue per pool: a killed worker may have died holding the old one's lock.
        messages = ctx.SimpleQueue()
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=worker.init_worker,
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
                    bar.set_total(sum(len(t.items) for t in pending.values()) + sum(
                        r["samples"] + len(r["failures"]) for r in records))
                    break
                planned.add(task.name)
                pending[task.name] = task
                futures[pool.submit(worker.write_shard, task)] = task.name
            if not futures:
                break
            done, _ = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
            # our own handles on the workers: a broken executor forgets its processes while we look for the dead one
            procs.update(getattr(pool, "_processes", None) or {})
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
            if not broken:
                continue
            # a worker died (decoder segfault, OOM kill): every shard in flight starts again in a new pool;
            # the sample the dead worker was on is suspect, and a sample suspected twice is recorded as a failure
            now = len(records) + sum(len(t.crashed) for t in pending.values())
            stalled, progress = (stalled + 1 if now == progress else 0), now
            if stalled > MAX_STALLED_RESTARTS:  # a total cap would stop a big run with a few bad files in it
                raise DataError(f"worker processes crashed {stalled + 1} times in a row without progress; stopping "
                                f"(finished shards are kept)")
            dead = _dead_pids(procs)
            if not any(pid in dead for _, pid in started.values()):
                dead = None  # cannot tell which worker died: every shard's sample is suspect
            pool.shutdown(wait=False, cancel_futures=True)
            pool, messages = new_pool()
            procs = {}
            names = list(futures.values())
            futures = {}
            for name in names:
                task = pending[name]
                if name in started:
                    index, pid = started.pop(name)
                    if dead is not None and pid not in dead:
                        futures[pool.submit(worker.write_shard, task)] = name
                        continue
                    key = (name, index)
                    suspects[key] += 1
                    if suspects[key] >= 2:
                        task.crashed[key[1]] = "the worker process died while decoding this input (twice)"
                futures[pool.submit(worker.write_shard, task)] = name
            # restarted shards report their samples again from the first one
            bar.reset(ok=sum(r["samples"] for r in records), failed=sum(len(r["failures"]) for r in records))
    except BaseException:
        _terminate(pool)
        raise
    pool.shutdown(wait=True)


def _dead_pids(procs: dict, wait_s: float = 2.0) -> set[int]:
    """Pids of the worker processes in `procs` (pid -> Process) that crashed; all that exited if none did.
    The pool can report itself broken a moment before the dead process can be reaped (its pipes close first), so
    this waits up to `wait_s` for an exit status."""
    deadline = time.monotonic() + wait_s
    while not any(proc.exitcode is not None for proc in procs.values()) and time.monotonic() < deadline:
        time.sleep(0.01)
    gone = {pid: proc.exitcode for pid, proc in list(procs.items()) if proc.exitcode is not None}
    crashed = {pid for pid, code in gone.items() if code != -signal.SIGTERM}  # not the executor's own clean-up
    return crashed or set(gone)


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
