"""`pope`: lmms-lab/POPE, yes/no object-hallucination probes on COCO images (9,000 questions).

Published layout: default config `data/test-XXXXX-of-YYYYY.parquet`, and the same rows split by sampling
strategy in config `Full/{adversarial,popular,random}-*.parquet`; columns
  id, question_id, question, answer (yes|no), image_source, image ({bytes, path}), category
Only one config is read, so no question counts twice: `data/` by default, `opts.split` picks categories
("adversarial" or "popular,random") from `Full/` when present, else filters `data/`; a copy holding only
`Full/` is read whole (adversarial, popular, random) when no category is named. Each question is a
two-option MCQ, options ["yes", "no"], answer A for yes and B for no; category = POPE category,
cluster = image_source (the COCO image, asked about several times).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

from fvlm_cli.data.sources import _hub
from fvlm_cli.data.sources.base import RawSample, SourceOptions
from fvlm_cli.errors import DataError

NAME = "pope"
KIND_DEFAULT = "mcq"
HUB_REPO = "lmms-lab/POPE"

CATEGORIES = ("adversarial", "popular", "random")
OPTIONS = ["yes", "no"]
_COLUMNS = ["question_id", "question", "answer", "image_source", "image", "category"]


def iter_samples(input: Optional[str], opts: SourceOptions) -> Iterator[RawSample]:
    cats = _hub.selectors(opts.split)
    unknown = [c for c in cats if c not in CATEGORIES]
    if unknown:
        raise DataError(f"pope: split selects categories {'/'.join(CATEGORIES)}, got {', '.join(unknown)}")
    root = _hub.resolve_root(input, opts, default_repo=HUB_REPO, allow_patterns=["data/*.parquet"])
    if root.is_file():
        files = [root]
    else:
        per_cat = {c: _hub.glob_files(root, [f"Full/{c}-*.parquet"]) for c in cats}
        if cats and all(per_cat.values()):
            files = [f for c in cats for f in per_cat[c]]
        else:  # the default config; a copy holding only the Full config reads it whole (the same 9,000 rows)
            files = (_hub.glob_files(root, ["data/*.parquet"]) or _hub.glob_files(root, ["*.parquet"])
                     or [f for c in CATEGORIES for f in _hub.glob_files(root, [f"Full/{c}-*.parquet"])])
    if not files:
        raise DataError(f"pope: no data/*.parquet (or Full/<category>-*.parquet) under {root}")
    return _hub.take(_samples(files, set(cats)), opts.limit)


def _samples(files: list[Path], cats: set[str]) -> Iterator[RawSample]:
    n = 0
    for path in files:
        for row in _hub.iter_parquet(path, _COLUMNS, required=["question", "answer", "image"]):
            if cats and row.get("category") not in cats:
                continue
            # question_id restarts in each category, so the category makes it unique
            qid = row.get("question_id") or f"row{n:05d}"
            id = f"{row.get('category') or 'pope'}-{qid}"
            n += 1
            try:
                yield _sample(id, row)
            except _hub.BAD_ROW as e:
                yield _hub.error_sample(id, NAME, KIND_DEFAULT, _hub.row_error(e))


def _sample(id: str, row: dict) -> RawSample:
    answer = str(_hub.need(row, "answer")).strip().lower()
    if answer not in OPTIONS:
        raise ValueError(f"answer {row['answer']!r} is neither yes nor no")
    media = _hub.image_cell(row.get("image"))
    if media is None:
        raise ValueError("row has no image")
    return _hub.mcq_sample(
        id=id,
        source=NAME,
        question=str(_hub.need(row, "question")),
        options=OPTIONS,
        answer_index=OPTIONS.index(answer),
        category=str(row.get("category") or "unknown"),
        cluster=str(row.get("image_source") or id),
        media=media,
        media_kind="image",
    )
