"""`webvid`: WebVid-10M / WebVid-2M captions, stage 1 (captioning / alignment).

Published layout: metadata CSVs with the columns `videoid, contentUrl, duration, page_dir, name`
(`results_2M_train.csv`, `results_10M_val.csv`, ...; on the Hub, TempoFunk/webvid-10M as
`data/{train,val}/partitions/NNNN.csv`). `name` is the caption; the video itself lives at `contentUrl`
and is downloaded by the precompute workers (http(s) only, timeout, size cap, retries; see download.py).

--input: a CSV (read as given), a folder of CSVs, or a Hub dataset id. Splits are never mixed: by default
only the train CSVs are read (those naming `train` in their path: `data/train/partitions/*.csv`,
`results_10M_train.csv`); `--split val` reads only the validation ones (`data/val/partitions/*.csv`,
`results_2M_val.csv`). A folder whose CSVs name neither split is read whole. A Hub id fetches only the
chosen split's partitions. `--set videos_dir=DIR` uses already-downloaded videos (`DIR/{page_dir}/{videoid}.mp4`
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
SPLITS = ("train", "val")


def iter_samples(input: Optional[str], opts: SourceOptions) -> Iterator[RawSample]:
    split = (opts.split or "train").strip()
    if split not in SPLITS:
        raise DataError(f"webvid: --split is train or val, got {split!r}")
    root = _hub.resolve_root(input, opts, default_repo=HUB_REPO, allow_patterns=[f"data/{split}/partitions/*.csv"])
    csvs = csv_files(root, split)
    for path in csvs:  # a wrong file fails the run before anything is written
        _check_header(path)
    videos_dir = opts.extra.get("videos_dir")
    prompt = str(opts.extra.get("prompt", PROMPT))
    return _hub.take(_samples(csvs, Path(videos_dir) if videos_dir else None, prompt), opts.limit)


def csv_files(root: Path, split: str) -> list[Path]:
    """The metadata CSVs of `root` (a CSV or a folder), sorted: those naming `split` in their path (a folder
    whose CSVs name no split at all is read whole)."""
    if root.is_file():
        return [root]
    files = _hub.glob_files(root, ["**/*.csv"])

    def names(p: Path) -> set[str]:
        return set(re.split(r"[/_.-]", p.relative_to(root).as_posix().lower()))

    if any(names(p) & {"train", "val", "validation"} for p in files):
        wanted = {"val", "validation"} if split == "val" else {"train"}
        files = [p for p in files if names(p) & wanted]
    elif split == "val":
        files = []  # nothing here is marked as validation data
    if not files:
        raise DataError(f"webvid: no metadata CSV for split {split!r} under {root}")
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
