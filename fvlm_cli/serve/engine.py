"""The one thread that runs the model: requests queue up, compatible ones are generated as one batch.

Handlers (asyncio) decode media in worker threads, then `submit` a GenJob; the engine thread takes it, waits up
to `batch_wait_s` for more jobs with the same decoding settings (mode, max_tokens, temperature, top_p, order,
seed), runs them as one `generate_clips` batch, and resolves each job's future. Streaming jobs receive each new
token id as it is made. A row stops early when its text reaches one of the job's stop strings or when its handler
cancels it (a streaming client went away), so the batch does not wait on it. A CallJob runs any function on this
thread (the demo page's three-mode comparison), so the model is never run by two threads at once; `stats` counts
batches and checks exactly that.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from fvlm_cli.serve.protocol import ApiError, cut_at_stop


@dataclass
class GenJob:
    clip: Any                       # frames [T, 3, S, S]
    messages: list                  # the conversation (text only)
    key: tuple                      # (mode, max_tokens, temperature, top_p, order, seed): batchable together
    loop: asyncio.AbstractEventLoop
    stream: bool = False
    stop: tuple = ()                # stop strings: the row ends once its text contains one
    future: asyncio.Future = None
    tokens: Optional[asyncio.Queue] = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self):
        self.future = self.loop.create_future()
        if self.stream:
            self.tokens = asyncio.Queue()


@dataclass
class CallJob:
    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future = None

    def __post_init__(self):
        self.future = self.loop.create_future()


@dataclass
class Stats:
    requests: int = 0
    batches: int = 0
    largest_batch: int = 0
    cancelled: int = 0              # rows dropped or ended early because their client went away
    running: int = 0
    most_running: int = 0           # must stay 1: the model never runs twice at once
    busy_s: float = 0.0
    started: float = field(default_factory=time.time)


class Engine:
    def __init__(self, lm, *, batch_size: int = 4, batch_wait_s: float = 0.01, max_queue: int = 64):
        self.lm, self.batch_size, self.batch_wait_s, self.max_queue = lm, max(1, batch_size), batch_wait_s, max_queue
        self.queue: queue.Queue = queue.Queue()
        self.held: collections.deque = collections.deque()  # taken while batching but not compatible: next
        self.stats = Stats()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="fvlm-engine", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=10)

    def pending(self) -> int:
        return self.queue.qsize() + len(self.held)

    def submit(self, job) -> None:
        if self.pending() >= self.max_queue:
            raise ApiError(503, f"the server is busy ({self.pending()} requests waiting); try again shortly",
                           code="queue_full")
        self.queue.put(job)

    # ---- the engine thread
    def _next(self, timeout: Optional[float] = None):
        if self.held:
            return self.held.popleft()
        return self.queue.get(timeout=timeout) if timeout is not None else self.queue.get()

    def _run(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            if isinstance(job, CallJob):
                self._guarded(lambda: self._call(job))
                continue
            batch = [job]
            deadline = time.monotonic() + self.batch_wait_s
            skipped = []
            while len(batch) < self.batch_size:
                left = deadline - time.monotonic()
                if left <= 0 and not self.held:
                    break
                try:
                    nxt = self.held.popleft() if self.held else self.queue.get(timeout=max(left, 0))
                except queue.Empty:
                    break
                if isinstance(nxt, GenJob) and nxt.key == job.key:
                    batch.append(nxt)
                else:
                    skipped.append(nxt)
            self.held.extend(skipped)
            if None in skipped:  # shutting down: finish this batch, then stop
                self.held.remove(None)
                self._guarded(lambda: self._generate(batch))
                return
            self._guarded(lambda: self._generate(batch))

    def _guarded(self, fn) -> None:
        with self._lock:
            self.stats.running += 1
            self.stats.most_running = max(self.stats.most_running, self.stats.running)
        t0 = time.perf_counter()
        try:
            fn()
        finally:
            with self._lock:
                self.stats.running -= 1
                self.stats.busy_s += time.perf_counter() - t0

    @staticmethod
    def _resolve(job, result=None, error: Optional[BaseException] = None) -> None:
        def done():
            if job.future.done():
                return
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)
        job.loop.call_soon_threadsafe(done)
        if getattr(job, "tokens", None) is not None:
            job.loop.call_soon_threadsafe(job.tokens.put_nowait, None)  # end of stream

    def _call(self, job: CallJob) -> None:
        try:
            self._resolve(job, job.fn())
        except BaseException as e:  # handed to the request that asked; the server stays up
            self._resolve(job, error=e)

    def _generate(self, batch: list[GenJob]) -> None:
        from fvlm_cli.infer.core import generate_clips

        left = [j.cancel.is_set() for j in batch]  # the client left while the job waited: do not run it
        gone = [j for j, g in zip(batch, left) if g]
        if gone:
            with self._lock:
                self.stats.cancelled += len(gone)
            for j in gone:
                j.loop.call_soon_threadsafe(j.future.cancel)
                if j.tokens is not None:
                    j.loop.call_soon_threadsafe(j.tokens.put_nowait, None)
            batch = [j for j, g in zip(batch, left) if not g]
            if not batch:
                return
        mode, max_tokens, temperature, top_p, order, seed = batch[0].key
        streams = [(i, j) for i, j in enumerate(batch) if j.tokens is not None]
        made: list[list[int]] = [[] for _ in batch]  # for the stop strings
        tok = self.lm.tokenizer

        def on_step(tokens):
            cut = []
            for i, j in enumerate(batch):
                if tokens[i] is None:
                    continue
                if j.tokens is not None:
                    j.loop.call_soon_threadsafe(j.tokens.put_nowait, tokens[i])
                if j.stop:
                    made[i].append(tokens[i])
                    if cut_at_stop(tok.decode(made[i], skip_special_tokens=True), j.stop)[1]:
                        cut.append(i)
                        continue
                if j.cancel.is_set():
                    cut.append(i)
                    with self._lock:
                        self.stats.cancelled += 1
            return cut

        try:
            gens = generate_clips(self.lm, [j.clip for j in batch], [j.messages for j in batch], mode=mode,
                                  max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, order=order,
                                  seed=seed, on_step=on_step)
        except Exception as e:
            if len(batch) > 1 and not streams:  # find the one that fails; the others still get answers
                for j in batch:
                    self._generate([j])
                return
            for j in batch:
                self._resolve(j, error=e)
            return
        with self._lock:
            self.stats.requests += len(batch)
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        for j, g in zip(batch, gens):
            self._resolve(j, g)
