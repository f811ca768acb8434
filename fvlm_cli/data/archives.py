"""Videos inside published archives, read where they are (SPEC §3.6). No media decoding here.

- zip (Video-MME `videos_chunked_NN.zip`, MVBench `video/<src>.zip`, OpenVid `OpenVid_partN.zip`): a member
  is a `Member` (picklable: archive path(s) + member name); the worker opens it as a seekable file object
  for PyAV (`open_member`), so nothing is extracted and nothing is written.
- split zip (OpenVid `OpenVid_partN_partaa` + `_partab`, meant for `cat a b > x.zip`): the parts are read as
  one concatenated seekable stream (`ConcatFile`) without writing the concatenation.
- tar.gz (LLaVA-Video `<subset>_videos_N.tar.gz`): gzip has no random access, so each archive is extracted
  once, in one ordered pass, into a cache folder OUTSIDE the input (`extract_tar_cached`); a sample points
  at the extracted file and names the member (`archive.tar.gz:path`) in failure rows.
The standard library's `zipfile` / `tarfile` do the format work; only the part concatenation is written
here (no library reads split zip parts without joining them on disk first).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional, Sequence

from fvlm_cli.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_SPLIT_PART = re.compile(r"^(?P<base>.+)_part(?P<part>[a-z]{2})$")


# ---------------------------------------------------------------------------- split parts

class ConcatFile(io.RawIOBase):
    """Several files read as one seekable byte stream (split zip parts), never joined on disk."""

    def __init__(self, paths: Sequence[str | os.PathLike]):
        super().__init__()
        self.paths = [str(p) for p in paths]
        self.sizes = [os.path.getsize(p) for p in self.paths]
        self.starts = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.size = sum(self.sizes)
        self.pos = 0
        self._open: tuple[int, Optional[io.BufferedReader]] = (-1, None)
        self.name = "+".join(Path(p).name for p in self.paths)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def _file(self, i: int):
        if self._open[0] != i:
            if self._open[1] is not None:
                self._open[1].close()
            self._open = (i, open(self.paths[i], "rb"))
        return self._open[1]

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self.pos < self.size:
            i = max(j for j, s in enumerate(self.starts) if s <= self.pos)
            f = self._file(i)
            f.seek(self.pos - self.starts[i])
            n = f.readinto(view[done: done + min(len(view) - done, self.starts[i] + self.sizes[i] - self.pos)])
            if not n:
                break
            done += n
            self.pos += n
        return done

    def close(self) -> None:
        if self._open[1] is not None:
            self._open[1].close()
            self._open = (-1, None)
        super().close()


def split_zip_groups(files: Iterable[Path]) -> tuple[list[tuple[Path, ...]], list[Path]]:
    """(split groups `base_partaa, base_partab, ...` in part order, the other files) of `files`."""
    groups: dict[Path, list[Path]] = {}
    rest = []
    for f in files:
        m = _SPLIT_PART.match(f.name)
        if m:
            groups.setdefault(f.with_name(m["base"]), []).append(f)
        else:
            rest.append(f)
    return [tuple(sorted(parts, key=lambda p: p.name)) for _, parts in sorted(groups.items())], rest


# ---------------------------------------------------------------------------- zip members

@dataclass(frozen=True)
class Member:
    """A file (or, with is_dir, a folder of frame images) inside a zip or a split zip, read in place."""

    parts: tuple[str, ...]      # the zip file, or its split parts in order
    name: str                   # member path inside the archive ("data/abc.mp4", "tvqa/frames/clip_00")
    is_dir: bool = False

    @property
    def archive(self) -> str:
        return "+".join(Path(p).name for p in self.parts)

    def __str__(self) -> str:  # how failure rows name it: "videos_chunked_01.zip:data/abc.mp4"
        return f"{self.archive}:{self.name}"

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix.lower()


@lru_cache(maxsize=32)  # Video-MME ships 20 videos_chunked_NN.zip: keep each open once per process
def _zip(parts: tuple[str, ...]) -> zipfile.ZipFile:
    """An open ZipFile per archive and process (reading the central directory once, not per sample)."""
    try:
        return zipfile.ZipFile(ConcatFile(parts) if len(parts) > 1 else parts[0])
    except (zipfile.BadZipFile, OSError) as e:
        names = "+".join(Path(p).name for p in parts)
        raise DataError(f"{names}: not a readable zip archive ({e})") from e


def zip_members(parts: Sequence[str | os.PathLike]) -> list[str]:
    """The member names of a zip (or split zip), in archive order."""
    return _zip(tuple(str(p) for p in parts)).namelist()


def index_zips(archives: Iterable[Sequence[str | os.PathLike]]) -> dict[str, Member]:
    """{member path: Member} over several zips, the first archive holding a path winning; folders that hold
    images are indexed too (as is_dir Members, for frame folders)."""
    index: dict[str, Member] = {}
    for parts in archives:
        key = tuple(str(p) for p in parts)
        for name in zip_members(key):
            clean = name.rstrip("/")
            if not clean or name.endswith("/"):
                continue
            index.setdefault(clean, Member(key, clean))
            if clean.lower().endswith(IMAGE_SUFFIXES) and "/" in clean:
                folder = clean.rsplit("/", 1)[0]
                index.setdefault(folder, Member(key, folder, is_dir=True))
    return index


def open_member(member: Member):
    """A seekable binary file object for a zip member (PyAV and PIL read it directly); name = the label."""
    f = _zip(member.parts).open(member.name)
    f.name = str(member)
    return f


def frame_members(member: Member) -> list[str]:
    """The image members directly inside a frame-folder Member, sorted by name."""
    prefix = member.name.rstrip("/") + "/"
    return sorted(n for n in _zip(member.parts).namelist()
                  if n.startswith(prefix) and "/" not in n[len(prefix):] and n.lower().endswith(IMAGE_SUFFIXES))


def read_member(member: Member, name: str) -> bytes:
    return _zip(member.parts).read(name)


# ---------------------------------------------------------------------------- tar.gz

DEFAULT_CACHE = "~/.cache/fvlm"


def archive_cache(cache_dir: Optional[str]) -> Path:
    return Path(cache_dir or DEFAULT_CACHE).expanduser() / "archives"


def extract_tar_cached(archive: Path, cache_root: Path, input_root: Optional[Path] = None) -> tuple[Path, list[str]]:
    """Extract `archive` once into `cache_root/<name>-<key>/` (key: path, size, mtime); (folder, member files).

    The cache must lie outside `input_root` (the user's dataset folder is never written to). A finished
    extraction is marked by `.members.json`; an interrupted one is redone from scratch.
    """
    archive = archive.resolve()
    cache_root = cache_root.expanduser().resolve()
    if input_root is not None and cache_root.is_relative_to(input_root.resolve()):
        raise DataError(f"the archive cache {cache_root} lies inside the input {input_root}; give --cache-dir "
                        "outside the dataset folder (fvlm never writes into the input)")
    st = archive.stat()
    key = hashlib.sha1(f"{archive}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    dest = cache_root / f"{archive.name}-{key}"
    done = dest / ".members.json"
    if done.is_file():
        return dest, json.loads(done.read_text())
    tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    members = []
    try:
        with tarfile.open(archive, "r:*") as tf:
            for info in tf:  # one ordered pass over the gzip stream
                if not info.isfile():
                    continue
                if hasattr(tarfile, "data_filter"):
                    tf.extract(info, tmp, filter="data")  # refuses absolute paths, links out, devices
                else:  # Python without PEP 706 filters: check the path ourselves (links are skipped above)
                    if not (tmp / info.name).resolve().is_relative_to(tmp.resolve()):
                        raise tarfile.TarError(f"member {info.name!r} escapes the archive folder")
                    tf.extract(info, tmp)
                members.append(info.name)
    except (tarfile.TarError, OSError, EOFError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot read archive {archive}: {e}") from e
    (tmp / ".members.json").write_text(json.dumps(members))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest, members
