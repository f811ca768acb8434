"""`rlaif-v`: openbmb/RLAIF-V-Dataset, image preference pairs for `fvlm dpo`.

Published layout: `RLAIF-V-Dataset_000.parquet` ... at the repo root (any *.parquet below the input is read,
in path order), columns
  image: {bytes, path}, question, chosen, rejected, ds_name, origin_dataset, origin_split, idx, image_path
A sample is messages [user: question] with the image, and extra `chosen` / `rejected` (the two replies).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

from fvlm_cli.data.sources import _hub
from fvlm_cli.data.sources.base import RawSample, SourceOptions
from fvlm_cli.errors import DataError

NAME = "rlaif-v"
KIND_DEFAULT = "dpo"
HUB_REPO = "openbmb/RLAIF-V-Dataset"

_COLUMNS = ["image", "question", "chosen", "rejected", "ds_name", "origin_dataset", "idx"]


def iter_samples(input: Optional[str], opts: SourceOptions) -> Iterator[RawSample]:
    root = _hub.resolve_root(input, opts, default_repo=HUB_REPO, allow_patterns=["*.parquet"])
    files = [root] if root.is_file() else _hub.glob_files(root, ["**/*.parquet"])
    if not files:
        raise DataError(f"rlaif-v: no *.parquet files under {root}")
    return _hub.take(_samples(files), opts.limit)


def _samples(files: list[Path]) -> Iterator[RawSample]:
    for path in files:
        for i, row in enumerate(_hub.iter_parquet(path, _COLUMNS, required=["image", "question", "chosen",
                                                                             "rejected"])):
            id = f"{path.stem}-{i:06d}"
            try:
                yield _sample(id, row)
            except _hub.BAD_ROW as e:
                yield _hub.error_sample(id, NAME, KIND_DEFAULT, _hub.row_error(e))


def _sample(id: str, row: dict) -> RawSample:
    question, chosen, rejected = (str(_hub.need(row, k)) for k in ("question", "chosen", "rejected"))
    media = _hub.image_cell(row.get("image"))
    if media is None:
        raise ValueError("row has no image")
    extra = {"chosen": chosen, "rejected": rejected}
    for key in ("ds_name", "origin_dataset", "idx"):
        if row.get(key) is not None:
            extra[key] = row[key]
    return RawSample(
        id=id,
        source=NAME,
        kind=KIND_DEFAULT,
        messages=[{"role": "user", "content": question.strip()}],
        media=media,
        media_kind="image",
        extra=extra,
    )
