"""One progress display for every long command (precompute, bench, caption, compare-modes).

On a terminal: a rich bar per task on stderr (done/total, failed, rate, ETA). Otherwise (CI logs,
pipes): one plain line per task every `every` seconds and at the end, so logs stay readable.
Disabled: silent. Nothing heavy is imported unless a terminal bar is drawn.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Task:
    label: str
    total: Optional[int] = None
    done: int = 0
    failed: int = 0
    start: int = 0                 # already done when the task was added (resume): not counted in the rate
    t0: float = field(default_factory=time.time)
    last_log: float = field(default_factory=time.time)
    rich_id: Optional[int] = None

    def rate(self) -> float:
        return (self.done - self.start) / max(time.time() - self.t0, 1e-9)

    def eta(self) -> Optional[float]:
        r = self.rate()
        if self.total is None or r <= 0 or self.done >= self.total:
            return None
        return (self.total - self.done) / r


class Progress:
    """`add(label, total)`, then `advance(label, n, failed=k)`; `close()` at the end (or use as a context)."""

    def __init__(self, enabled: bool = True, prefix: str = "fvlm", every: float = 10.0, unit: str = "items"):
        self.enabled, self.prefix, self.every, self.unit = enabled, prefix, every, unit
        self.tasks: dict[str, Task] = {}
        self._rich = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._rich = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("[red]{task.fields[failed]}"), TextColumn("{task.fields[rate]}"),
                                      TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                      console=Console(stderr=True), transient=False)
            self._rich.start()

    def add(self, label: str, total: Optional[int] = None, completed: int = 0) -> Task:
        t = Task(label, total, done=completed, start=completed)
        if self._rich is not None:
            t.rich_id = self._rich.add_task(label, total=total, completed=completed, failed="", rate="")
        self.tasks[label] = t
        if completed and self.enabled and self._rich is None:
            self._log(t, "resuming")
        return t

    def set_total(self, label: str, total: Optional[int]) -> None:
        self.tasks[label].total = total
        self._draw(self.tasks[label], force=False)

    def advance(self, label: str, n: int = 1, failed: int = 0) -> None:
        """`n` items finished, of which `failed` failed (failed items count as done)."""
        t = self.tasks[label]
        t.done += n
        t.failed += failed
        self._draw(t, force=t.total is not None and t.done >= t.total)

    def _draw(self, t: Task, force: bool) -> None:
        if self._rich is not None:
            self._rich.update(t.rich_id, completed=t.done, total=t.total,
                              failed=f"{t.failed} failed" if t.failed else "", rate=f"{t.rate():.2f} {self.unit}/s")
        elif self.enabled and (force or time.time() - t.last_log >= self.every):
            t.last_log = time.time()
            self._log(t)

    def line(self, t: Task, note: str = "") -> str:
        total = f"/{t.total}" if t.total is not None else ""
        failed = f", {t.failed} failed" if t.failed else ""
        eta = t.eta()
        eta_text = f", ETA {eta:.0f} s" if eta is not None else ""
        note = f" ({note})" if note else ""
        return f"[{self.prefix}] {t.label}: {t.done}{total}{note}{failed}, {t.rate():.2f} {self.unit}/s{eta_text}"

    def _log(self, t: Task, note: str = "") -> None:
        print(self.line(t, note), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            for t in self.tasks.values():
                self._rich.update(t.rich_id, completed=t.done, total=t.total if t.total is not None else t.done)
            self._rich.stop()
            self._rich = None
        elif self.enabled:
            for t in self.tasks.values():
                if t.last_log < time.time() - 1e-3 and not (t.total is not None and t.done >= t.total):
                    self._log(t)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
