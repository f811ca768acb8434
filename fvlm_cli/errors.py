"""Error types. Every user-facing mistake is an `FvlmError`: the CLI prints one red line and exits 2."""

from __future__ import annotations

import errno
import os


class FvlmError(Exception):
    """A user error: bad input, missing file, bad config. Exit status 2, no traceback."""

    exit_code = 2


class ConfigError(FvlmError):
    """A config key or value is wrong."""


class MediaError(FvlmError):
    """A video or image cannot be read."""


class ModelLoadError(FvlmError):
    """A model cannot be found, reached, or its weights do not match the architecture."""


class DataError(FvlmError):
    """Shards or dataset inputs are missing or malformed."""


class CorruptShard(DataError):
    """A shard whose bytes are bad (a broken tar, fewer samples than its manifest says) after the retries: training
    skips the rest of it and goes on."""


class TrainingError(FvlmError):
    """Training cannot continue (non-finite losses, bad resume state)."""


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM: a scheduler's preemption, `kill`, `docker stop`). It unwinds like
    Ctrl-C, so every command's clean-up runs (precompute writes its manifest, training saves a checkpoint first);
    the CLI exits 143."""


# signals that asked this process to stop (typer reports any KeyboardInterrupt as exit 130; the CLI reads this)
SIGNALS_RECEIVED: list[int] = []


def worker_error_message(e: BaseException) -> str:
    """The original one-line message of an error a DataLoader worker raised (torch re-raises it in the main process
    with the worker's traceback as its message)."""
    text = str(e)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    return last.split(f"{type(e).__name__}: ", 1)[-1]


class StorageError(FvlmError):
    """This machine cannot store what the run writes (disk full, quota, read-only file system). The run stops and
    keeps its finished work; the input being processed is not recorded as bad, since it is not its fault."""


# errnos that say the machine, not the input, is at fault: no point going on, and no input should be blamed
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def storage_error(e: BaseException | None) -> StorageError | None:
    """The `StorageError` that `e` (or an exception it was raised from) amounts to, or None."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, StorageError):
            return e
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            where = f" writing {e.filename}" if e.filename else ""
            return StorageError(f"{e.strerror or os.strerror(e.errno)}{where}: free space (or fix the mount) and "
                                f"re-run the same command; finished work is kept")
        e = e.__cause__ or e.__context__
    return None
