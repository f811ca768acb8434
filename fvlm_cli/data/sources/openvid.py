"""`openvid`: OpenVid-1M, detailed video captions (stage 1 / stage 3 captioning).

Published layout (nkp37/OpenVid-1M): `data/train/OpenVid-1M.csv` (and `OpenVidHD.csv`; a copy at the repo
root is read too) with the columns
`video, caption, aesthetic score, motion score, temporal consistency score, camera motion, frame, fps,
seconds`, and the videos in `OpenVid_partN.zip` archives at the repo root, some parts shipped SPLIT as
`OpenVid_partN_partaa` + `OpenVid_partN_partab` (meant for `cat` into one zip). Members are looked up by file
name (the official script unzips with `-j`). Zips and split parts are read in place (the parts as one
concatenated stream; nothing is joined or extracted on disk); unzipped videos beside the CSV, in a `videos/`
or `video/` folder, or in `--set videos_dir=DIR` work too.

Which rows: without `--set parts`, every CSV row is expected to have its video (a missing one is a failure row
naming it). `--set parts=0,3` reads only those parts' archives and only the rows whose videos they hold. A Hub
id downloads the CSVs and the archives of `parts` (default `0`: one ~45 GB part; `--set parts=all` fetches
every part, several TB). `--split hd` picks the CSV whose name contains "hd" (default OpenVid-1M.csv).
`--set prompt=...` changes the user prompt.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator, Optional

from fvlm_cli.data import archives
from fvlm_cli.data.sources import _hub
from fvlm_cli.data.sources.base import RawSample, SourceOptions
from fvlm_cli.errors import DataError

NAME = "openvid"
KIND_DEFAULT = "caption"
HUB_REPO = "nkp37/OpenVid-1M"
PROMPT = "Describe this video in detail."
DEFAULT_CSV = "OpenVid-1M.csv"
HUB_DEFAULT_PARTS = "0"
_VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov")


def _parts(opts: SourceOptions, hub: bool) -> Optional[list[str]]:
    text = str(opts.extra.get("parts", HUB_DEFAULT_PARTS if hub else "all")).strip()
    if text == "all":
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise DataError(f"openvid: --set parts takes part numbers (e.g. 0,3) or 'all', got {text!r}")
    return parts


def allow_patterns(parts: Optional[list[str]]) -> list[str]:
    archives_ = ["OpenVid_part*"] if parts is None else [
        p for n in parts for p in (f"OpenVid_part{n}.zip", f"OpenVid_part{n}_part??")]
    # The CSVs sit in data/train/ (the card's layout); commits of Aug 2024 re-uploaded them, so a root
    # copy is fetched too when that is where they are.
    return ["data/train/*.csv", "OpenVid*.csv", *archives_]


def iter_samples(input: Optional[str], opts: SourceOptions) -> Iterator[RawSample]:
    parts = _parts(opts, _hub.goes_to_hub(input))
    root = _hub.resolve_root(input, opts, default_repo=HUB_REPO, allow_patterns=allow_patterns(parts))
    table = find_csv(root, opts.split)
    with open(table, newline="", encoding="utf-8") as f:  # a wrong file fails before anything is written
        columns = next(csv.reader(f), [])
    missing = [c for c in ("video", "caption") if c not in columns]
    if missing:
        raise DataError(f"{table}: not an OpenVid CSV (missing column(s) {', '.join(missing)}; "
                        f"has {', '.join(columns) or 'none'})")
    base = root if root.is_dir() else root.parent
    dirs = [Path(opts.extra["videos_dir"])] if opts.extra.get("videos_dir") else []
    for d in (table.parent, base):
        dirs += [d, d / "videos", d / "video"]
    video_dirs = list(dict.fromkeys(d for d in dirs if d.is_dir()))
    names = ["OpenVid_part*.zip"] if parts is None else [f"OpenVid_part{n}.zip" for n in parts]
    zips = _hub.zip_archives(base, names)
    if parts is not None:
        found = {Path(z[0]).name.split("_part")[1].split(".")[0] for z in zips}
        absent = [n for n in parts if n not in found]
        if absent:
            raise DataError(f"openvid: no OpenVid_part{absent[0]}.zip (or _partaa/_partab) under {base}")
    members = {}
    for name, member in archives.index_zips(zips).items():
        if not member.is_dir and name.lower().endswith(_VIDEO_SUFFIXES):
            members.setdefault(Path(name).name, member)
    prompt = str(opts.extra.get("prompt", PROMPT))
    return _hub.take(_samples(table, video_dirs, members, parts is not None, prompt), opts.limit)


def find_csv(root: Path, split: Optional[str]) -> Path:
    """The captions CSV: `root` itself, the one matching `split`, OpenVid-1M.csv, or the only CSV there is."""
    if root.is_file():
        return root
    files = [p for p in _hub.glob_files(root, ["**/*.csv"]) if ".fvlm-state" not in p.parts]
    if split:
        files = [p for p in files if split.lower() in p.stem.lower()]
    elif any(p.name == DEFAULT_CSV for p in files):
        files = [p for p in files if p.name == DEFAULT_CSV]
    by_name = {}
    for p in sorted(files, key=lambda p: (len(p.relative_to(root).parts), p.as_posix())):
        by_name.setdefault(p.name, p)  # the same CSV at the root and in data/train/: the shallower one
    files = list(by_name.values())
    if len(files) != 1:
        found = ", ".join(p.name for p in files[:8]) or "none"
        hint = "" if split else "; pick one with --split (a part of its name) or give the CSV path"
        raise DataError(f"openvid: expected one captions CSV under {root}, found {found}{hint}")
    return files[0]


def _samples(table: Path, video_dirs: list[Path], members: dict, only_present: bool,
             prompt: str) -> Iterator[RawSample]:
    with open(table, newline="", encoding="utf-8") as f:
        for row_no, row in enumerate(csv.DictReader(f), 1):
            video = (row.get("video") or "").strip()
            caption = (row.get("caption") or "").strip()
            id = Path(video).stem if video else f"row{row_no}"
            media = members.get(Path(video).name) if video else None
            if media is None and video:
                media = next((str(d / video) for d in video_dirs if (d / video).is_file()), None)
            if only_present and media is None:
                continue  # its part was not selected (--set parts)
            if not video or not caption:
                yield _hub.error_sample(id, NAME, KIND_DEFAULT,
                                        f"{table.name} row {row_no}: empty {'video' if not video else 'caption'}",
                                        label=video or None)
                continue
            if media is None:
                yield _hub.error_sample(id, NAME, KIND_DEFAULT,
                                        f"video {video} is in no OpenVid_part*.zip and no videos folder", label=video)
                continue
            yield RawSample(id=id, source=NAME, kind="caption", media=media, media_kind="video",
                            messages=[{"role": "user", "content": prompt},
                                      {"role": "assistant", "content": caption}])
