"""`scienceqa`: ScienceQA multiple-choice science questions; by default the image benchmark, `ScienceQA-IMG` test
(2,017 questions: the set published numbers, this model's included, report).

Published layouts (columns image ({bytes, path} or null), question, choices, answer (index), hint, task,
grade, subject, topic, category, skill, lecture, solution):
  lmms-lab/ScienceQA (default Hub id): `ScienceQA-IMG/{train,validation,test}-*.parquet` (image questions only)
  and `ScienceQA-FULL/{train,validation,test}-*.parquet` (all questions, text-only ones too);
  derek-thomas/ScienceQA: `data/{train,validation,test}-*.parquet` = FULL; its IMG config is the rows with an image.
`--split` is `[config:]split`: `test` (= ScienceQA-IMG:test, the default), `validation`, `ScienceQA-FULL:test`,
`FULL:validation`, ... Several selectors may name several splits of ONE config; two configs at once are
refused (their questions overlap). A non-empty hint goes before the question as "Context: ..."; image-less
questions (FULL) are text-only MCQs. category = subject; cluster = the question's own id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

from fvlm_cli.data.sources import _hub
from fvlm_cli.data.sources.base import RawSample, SourceOptions
from fvlm_cli.errors import DataError

NAME = "scienceqa"
KIND_DEFAULT = "mcq"
HUB_REPO = "lmms-lab/ScienceQA"

CONFIGS = ("ScienceQA-IMG", "ScienceQA-FULL")
DEFAULT_CONFIG = "ScienceQA-IMG"
SPLITS = ("train", "validation", "test")
_COLUMNS = ["image", "question", "choices", "answer", "hint", "subject", "grade", "topic", "skill"]


def _parse(selector: str) -> tuple[str, str]:
    config, sep, split = selector.rpartition(":")
    if not sep and selector in CONFIGS + ("IMG", "FULL"):
        config, split = selector, ""
    config = config or DEFAULT_CONFIG
    config = f"ScienceQA-{config}" if config in ("IMG", "FULL") else config
    split = split or "test"
    if config not in CONFIGS:
        raise DataError(f"scienceqa: unknown config {config!r} (configs: {', '.join(CONFIGS)})")
    if split not in SPLITS:
        raise DataError(f"scienceqa: unknown split {split!r} (splits: {', '.join(SPLITS)})")
    return config, split


def iter_samples(input: Optional[str], opts: SourceOptions) -> Iterator[RawSample]:
    wanted = list(dict.fromkeys(_parse(s) for s in (_hub.selectors(opts.split) or ["test"])))
    configs = {c for c, _ in wanted}
    if len(configs) > 1:
        raise DataError(f"scienceqa: --split names two configs ({', '.join(sorted(configs))}); their questions "
                        "overlap, so read one at a time")
    config = configs.pop()
    patterns = [p for _, split in wanted for p in (f"{config}/{split}-*.parquet", f"data/{split}-*.parquet")]
    root = _hub.resolve_root(input, opts, default_repo=HUB_REPO, allow_patterns=patterns)
    parts = []
    for _, split in wanted:
        files, image_only = _files(root, config, split)
        if not files:
            raise DataError(f"scienceqa: no {split}-*.parquet under {root} (expected {config}/{split}-*.parquet "
                            f"or data/{split}-*.parquet)")
        parts.append((f"{config}-{split}", files, image_only))
    return _hub.take(_samples(parts), opts.limit)


def _files(root: Path, config: str, split: str) -> tuple[list[Path], bool]:
    """(parquet files, keep only rows with an image): the config's own folder, else derek-thomas's data/
    (FULL; IMG = its rows with an image), else bare `<split>-*.parquet` files taken as they are."""
    if root.is_file():
        return [root], False
    files = _hub.glob_files(root, [f"{config}/{split}-*.parquet"])
    if files:
        return files, False
    files = _hub.glob_files(root, [f"data/{split}-*.parquet"])
    if files:
        return files, config == "ScienceQA-IMG"
    return _hub.glob_files(root, [f"{split}-*.parquet"]), False


def _samples(parts: list[tuple[str, list[Path], bool]]) -> Iterator[RawSample]:
    for prefix, files, image_only in parts:
        n = 0
        for path in files:
            for row in _hub.iter_parquet(path, _COLUMNS, required=["question", "choices", "answer"]):
                if image_only and _hub.image_cell(row.get("image")) is None:
                    continue
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
