"""A precompute source for the full-disk test (registered by the test in a subprocess): six captioned clips, the
fifth of which fails to open the way an input does when the disk under its download or cache is full."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from fvlm_cli.data.sources.base import RawSample

NAME = "fulldisk"
FULL = "FVLM_TEST_DISK_FULL"  # set: the fifth input's path lookup raises ENOSPC


class FillsTheDisk(os.PathLike):
    """A local video whose lookup fails with ENOSPC while FULL is set (what an extraction to a full cache raises)."""

    def __init__(self, path: str):
        self.path = path

    def __fspath__(self) -> str:
        if os.environ.get(FULL):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/cache/clip04.mp4")
        return self.path

    def __str__(self) -> str:
        return self.path


def iter_samples(input, opts):
    chat = [{"role": "user", "content": "Describe this video."}, {"role": "assistant", "content": "A clip."}]
    for i in range(6):
        path = str(Path(input) / f"clip{i:02d}.mp4")
        yield RawSample(id=f"s{i}", source=NAME, kind="caption", messages=chat,
                        media=FillsTheDisk(path) if i == 4 else path)
