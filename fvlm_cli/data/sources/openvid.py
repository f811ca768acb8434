"""`openvid`: OpenVid-1M, detailed video captions (stage 1 / stage 3 captioning).

Published layout (nkp37/OpenVid-1M): `data/train/OpenVid-1M.csv` (and `OpenVidHD.csv`) with the columns
`video, caption, aesthetic score, motion score, temporal consistency score, camera motion, frame, fps,
seconds`, plus the videos shipped as `OpenVid_partN.zip` archives that unpack to `<name>.mp4` files.

--input: the folder holding the CSV and the unpacked videos, or the CSV itself. Videos are looked up
beside the CSV, in a `videos/` or `video/` folder beside it or under the input folder, or in
`--set videos_dir=DIR`. With several CSVs, `--split hd` picks the one whose name contains "hd"
(default: OpenVid-1M.csv). A Hub id downloads only the CSVs (the videos are terabytes):
give `--set videos_dir=` for them. `--set prompt=...` changes the user prompt.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator, Optional

from fvlm_cli.data.sources import _hub
from fvlm_cli.data.sources.base import RawSample, SourceOptions
from fvlm_cli.errors import DataError

NAME = "openvid"
KIND_DEFAULT = "caption"
HUB_REPO = "nkp37/OpenVid-1M"
PROMPT = "Describe this video in detail."
DEFAULT_CSV = "OpenVid-1M.csv"


def iter_samples(input: Optional[str], opts: SourceOptions) -> Iterator[RawSample]:
    root = _hub.resolve_root(input, opts, default_repo=HUB_REPO, allow_patterns=["*.csv"])
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
    prompt = str(opts.extra.get("prompt", PROMPT))
    return _hub.take(_samples(table, video_dirs, prompt), opts.limit)


def find_csv(root: Path, split: Optional[str]) -> Path:
    """The captions CSV: `root` itself, the one matching `split`, OpenVid-1M.csv, or the only CSV there is."""
    if root.is_file():
        return root
    files = sorted((p for p in root.rglob("*.csv") if ".fvlm-state" not in p.parts), key=lambda p: p.as_posix())
    if split:
        files = [p for p in files if split.lower() in p.stem.lower()]
    elif any(p.name == DEFAULT_CSV for p in files):
        files = [p for p in files if p.name == DEFAULT_CSV]
    if len(files) != 1:
        found = ", ".join(p.name for p in files[:8]) or "none"
        hint = "" if split else "; pick one with --split (a part of its name) or give the CSV path"
        raise DataError(f"openvid: expected one captions CSV under {root}, found {found}{hint}")
    return files[0]


def _samples(table: Path, video_dirs: list[Path], prompt: str) -> Iterator[RawSample]:
    with open(table, newline="", encoding="utf-8") as f:
        for row_no, row in enumerate(csv.DictReader(f), 1):
            video = (row.get("video") or "").strip()
            caption = (row.get("caption") or "").strip()
            id = Path(video).stem if video else f"row{row_no}"
            if not video or not caption:
                yield _hub.error_sample(id, NAME, KIND_DEFAULT,
                                        f"{table.name} row {row_no}: empty {'video' if not video else 'caption'}")
                continue
            path = next((d / video for d in video_dirs if (d / video).is_file()), None)
            if path is None:
                yield _hub.error_sample(id, NAME, KIND_DEFAULT, f"video file not found: {video}")
                continue
            yield RawSample(id=id, source=NAME, kind="caption", media=str(path), media_kind="video",
                            messages=[{"role": "user", "content": prompt},
                                      {"role": "assistant", "content": caption}])
