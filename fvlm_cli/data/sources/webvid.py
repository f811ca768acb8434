"""`webvid`: WebVid-10M / WebVid-2M captions, stage 1 (captioning / alignment).

Published layout: metadata CSVs with the columns `videoid, contentUrl, duration, page_dir, name`
(`results_2M_train.csv`, `results_10M_val.csv`, ...; on the Hub, TempoFunk/webvid-10M as
`data/{train,val}/partitions/NNNN.csv`). `name` is the caption; the video itself lives at `contentUrl`
and is downloaded by the precompute workers (http(s) only, timeout, size cap, retries; see download.py).

--input: a CSV, a folder of CSVs (all of them, sorted; `--split train|val` keeps the matching ones),
or a Hub dataset id. `--set videos_dir=DIR` uses already-downloaded videos (`DIR/{page_dir}/{videoid}.mp4`
or `DIR/{videoid}.mp4`) and fetches only the missing ones. `--set prompt=...` changes the user prompt.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Iterator, Optional

from fvlm_cli.data.sources import _hub
from fvlm_cli.data.sources.base import RawSample, SourceOptions
from fvlm_cli.errors import DataError

NAME = "webvid"
KIND_DEFAULT = "caption"
HUB_REPO = "TempoFunk/webvid-10M"
PROMPT = "What would be the WebVid caption for this video?"  # the reference recipe's stage-1 prompt
REQUIRED = ("videoid", "contentUrl", "name")


def iter_samples(input: Optional[str], opts: SourceOptions) -> Iterator[RawSample]:
    split = opts.split
    patterns = [f"*{split}*.csv"] if split else ["*.csv"]
    root = _hub.resolve_root(input, opts, default_repo=HUB_REPO, allow_patterns=patterns)
    csvs = csv_files(root, split)
    for path in csvs:  # a wrong file fails the run before anything is written
        _check_header(path)
    videos_dir = opts.extra.get("videos_dir")
    prompt = str(opts.extra.get("prompt", PROMPT))
    return _hub.take(_samples(csvs, Path(videos_dir) if videos_dir else None, prompt), opts.limit)


def csv_files(root: Path, split: Optional[str]) -> list[Path]:
    """The metadata CSVs of `root` (a CSV or a folder), sorted; with `split`, those naming it in their path."""
    if root.is_file():
        return [root]
    files = sorted(root.rglob("*.csv"), key=lambda p: p.relative_to(root).as_posix())
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    if split:
        files = [p for p in files if split in re.split(r"[/_.-]", p.relative_to(root).as_posix())]
    if not files:
        where = f" for split {split!r}" if split else ""
        raise DataError(f"webvid: no metadata CSV{where} under {root}")
    return files


def _check_header(path: Path) -> None:
    with open(path, newline="", encoding="utf-8") as f:
        columns = next(csv.reader(f), [])
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise DataError(f"{path}: not a WebVid metadata CSV (missing column(s) {', '.join(missing)}; "
                        f"has {', '.join(columns) or 'none'})")


def _samples(csvs: list[Path], videos_dir: Optional[Path], prompt: str) -> Iterator[RawSample]:
    for path in csvs:
        with open(path, newline="", encoding="utf-8") as f:
            for row_no, row in enumerate(csv.DictReader(f), 1):
                yield _sample(path, row_no, row, videos_dir, prompt)


def _sample(path: Path, row_no: int, row: dict, videos_dir: Optional[Path], prompt: str) -> RawSample:
    videoid = (row.get("videoid") or "").strip()
    id = videoid or f"{path.stem}-row{row_no}"
    url = (row.get("contentUrl") or "").strip()
    caption = (row.get("name") or "").strip()
    for field, value in (("videoid", videoid), ("contentUrl", url), ("name", caption)):
        if not value:
            return _hub.error_sample(id, NAME, KIND_DEFAULT, f"{path.name} row {row_no}: empty {field}")
    media = url
    if videos_dir is not None:
        page_dir = (row.get("page_dir") or "").strip()
        for cand in (videos_dir / page_dir / f"{videoid}.mp4", videos_dir / f"{videoid}.mp4"):
            if cand.is_file():
                media = str(cand)
                break
    return RawSample(id=id, source=NAME, kind="caption", media=media, media_kind="video",
                     messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": caption}])
