"""A precompute source for the two-worker crash test: shard 0 is [s0, s1, a crasher], shard 1 is [s3, s4, a slow s5].
Whenever the crasher kills its worker, the other worker is in the middle of s5; s5 must not be blamed for it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fvlm_cli.data.sources.base import RawSample

NAME = "crashpair"
SYNC = "FVLM_TEST_CRASH_SYNC"  # a folder the two workers count their attempts in


def _bump(name: str) -> int:
    """Append a line to SYNC/name; return how many lines it now has (SYNC: the test's folder, from the env)."""
    path = Path(os.environ[SYNC]) / name
    with open(path, "a") as f:
        f.write("x\n")
    return len(path.read_text().splitlines())


def _count(name: str) -> int:
    path = Path(os.environ[SYNC]) / name
    return len(path.read_text().splitlines()) if path.exists() else 0


class Crasher(os.PathLike):
    """Media whose path lookup kills its process (a decoder segfault, as the driver sees it), each time only once the
    other worker has started the slow sample again."""

    def __fspath__(self):
        n = _bump("crash")
        deadline = time.time() + 20
        while _count("slow") < n and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        os._exit(7)

    def __str__(self):
        return "crash.mp4"


class Slow(os.PathLike):
    """A healthy video that takes a few seconds to open: in flight whenever the crasher strikes."""

    def __init__(self, path: str):
        self.path = path

    def __fspath__(self):
        _bump("slow")
        time.sleep(3.0)
        return self.path

    def __str__(self):
        return self.path


def iter_samples(input, opts):
    chat = [{"role": "user", "content": "?"}, {"role": "assistant", "content": "!"}]
    for i in range(6):
        path = str(Path(input) / f"clip{i:02d}.mp4")
        media = Crasher() if i == 2 else Slow(path) if i == 5 else path
        yield RawSample(id=f"s{i}", source=NAME, kind="caption", messages=chat, media=media)
