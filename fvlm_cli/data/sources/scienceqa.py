"""`scienceqa`: ScienceQA multiple-choice science questions, with or without an image.

Published layouts (columns image ({bytes, path} or null), question, choices, answer (index), hint, task,
grade, subject, topic, category, skill, lecture, solution):
  derek-thomas/ScienceQA (default): `data/{train,validation,test}-*.parquet`
  lmms-lab/ScienceQA: `ScienceQA-FULL/{validation,test}-*.parquet`, `ScienceQA-IMG/{validation,test}-*.parquet`
`opts.split` is `[config:]split`, default `test` (config ScienceQA-FULL, else ScienceQA-IMG, where the folder
uses lmms-lab's layout). A non-empty hint goes before the question as "Context: ..."; image-less questions
are text-only MCQs. category = subject; cluster = the question's own id (questions are independent).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

from fvlm_cli.data.sources import _hub
from fvlm_cli.data.sources.base import RawSample, SourceOptions
from fvlm_cli.errors import DataError

NAME = "scienceqa"
KIND_DEFAULT = "mcq"
HUB_REPO = "derek-thomas/ScienceQA"

CONFIGS = ("ScienceQA-FULL", "ScienceQA-IMG")
_COLUMNS = ["image", "question", "choices", "answer", "hint", "subject", "grade", "topic", "skill"]


def _parse(selector: str) -> tuple[Optional[str], str]:
    config, sep, split = selector.rpartition(":")
    return (config or None) if sep else None, split or "test"


def iter_samples(input: Optional[str], opts: SourceOptions) -> Iterator[RawSample]:
    wanted = [_parse(s) for s in (_hub.selectors(opts.split) or ["test"])]
    patterns = [p for config, split in wanted
                for p in (f"data/{split}-*.parquet", f"{config or '*'}/{split}-*.parquet")]
    root = _hub.resolve_root(input, opts, default_repo=HUB_REPO, allow_patterns=patterns)
    parts = []
    for config, split in wanted:
        config, files = _files(root, config, split)
        if not files:
            raise DataError(f"scienceqa: no {split}-*.parquet under {root} (expected data/{split}-*.parquet "
                            f"or ScienceQA-FULL/{split}-*.parquet)")
        prefix = f"{config}-{split}" if config else split
        parts.append((prefix, files))
    return _hub.take(_samples(parts), opts.limit)


def _files(root: Path, config: Optional[str], split: str) -> tuple[Optional[str], list[Path]]:
    if root.is_file():
        return config, [root]
    if config:
        return config, _hub.glob_files(root, [f"{config}/{split}-*.parquet"])
    files = _hub.glob_files(root, [f"data/{split}-*.parquet"])
    if files:
        return None, files
    for candidate in CONFIGS:
        files = _hub.glob_files(root, [f"{candidate}/{split}-*.parquet"])
        if files:
            return candidate, files
    return None, _hub.glob_files(root, [f"{split}-*.parquet"])


def _samples(parts: list[tuple[str, list[Path]]]) -> Iterator[RawSample]:
    for prefix, files in parts:
        n = 0
        for path in files:
            for row in _hub.iter_parquet(path, _COLUMNS, required=["question", "choices", "answer"]):
                id = f"{prefix}-{n:05d}"
                n += 1
                try:
                    yield _sample(id, row)
                except _hub.BAD_ROW as e:
                    yield _hub.error_sample(id, NAME, KIND_DEFAULT, _hub.row_error(e))


def _sample(id: str, row: dict) -> RawSample:
    choices = [str(c) for c in _hub.need(row, "choices")]
    answer = row.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise ValueError(f"answer {answer!r} is not an option index")
    question = str(_hub.need(row, "question")).strip()
    hint = str(row.get("hint") or "").strip()
    if hint:
        question = f"Context: {hint}\n{question}"
    media = _hub.image_cell(row.get("image"))
    extra = {k: row[k] for k in ("grade", "topic", "skill") if row.get(k)}
    return _hub.mcq_sample(
        id=id,
        source=NAME,
        question=question,
        options=choices,
        answer_index=answer,
        category=str(row.get("subject") or "unknown"),
        cluster=id,
        media=media,
        media_kind="image" if media is not None else None,
        extra=extra,
    )
