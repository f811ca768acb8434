"""`smoltalk`: HuggingFaceTB/smoltalk, text-only chat data kept in every stage's mixture (§3.5 text retention).

Published layout: `data/<subset>/{train,test}-XXXXX-of-YYYYY.parquet`, subsets `all` (the union) and its
parts (`smol-magpie-ultra`, `everyday-conversations`, `numina-cot-100k`, ...), with column
  messages: list of {role: system|user|assistant, content}
System messages are kept. `opts.split` is comma-separated `subset[:split]` selectors, default `all:train`
(a folder holding the parquet files directly is read as one subset).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

from fvlm_cli.data.sources import _hub
from fvlm_cli.data.sources.base import RawSample, SourceOptions
from fvlm_cli.errors import DataError

NAME = "smoltalk"
KIND_DEFAULT = "text"
HUB_REPO = "HuggingFaceTB/smoltalk"

_ROLES = ("system", "user", "assistant")


def _parse(selector: str) -> tuple[str, str]:
    subset, _, split = selector.partition(":")
    return subset or "all", split or "train"


def iter_samples(input: Optional[str], opts: SourceOptions) -> Iterator[RawSample]:
    wanted = [_parse(s) for s in (_hub.selectors(opts.split) or ["all:train"])]
    patterns = [f"data/{subset}/{split}-*.parquet" for subset, split in wanted]
    root = _hub.resolve_root(input, opts, default_repo=HUB_REPO, allow_patterns=patterns)
    parts = [(subset, split, _files(root, subset, split)) for subset, split in wanted]
    for subset, split, files in parts:
        if not files:
            raise DataError(f"smoltalk: no {split}-*.parquet for subset {subset!r} under {root} "
                            f"(expected data/{subset}/{split}-*.parquet)")
    return _hub.take(_samples(parts), opts.limit)


def _files(root: Path, subset: str, split: str) -> list[Path]:
    if root.is_file():
        return [root]
    for folder in (root / "data" / subset, root / subset):
        files = _hub.glob_files(folder, [f"{split}-*.parquet"]) if folder.is_dir() else []
        if files:
            return files
    here = _hub.glob_files(root, ["*.parquet"])  # pointed at one subset folder, or a plain parquet export
    return [p for p in here if p.name.startswith(f"{split}-")] or here


def _samples(parts: list[tuple[str, str, list[Path]]]) -> Iterator[RawSample]:
    for subset, split, files in parts:
        n = 0
        for path in files:
            for row in _hub.iter_parquet(path, ["messages", "source"], required=["messages"]):
                id = f"{subset}-{split}-{n:08d}"
                n += 1
                try:
                    yield _sample(id, subset, row)
                except _hub.BAD_ROW as e:
                    yield _hub.error_sample(id, NAME, KIND_DEFAULT, _hub.row_error(e))


def _sample(id: str, subset: str, row: dict) -> RawSample:
    messages = []
    for m in _hub.need(row, "messages"):
        role = m.get("role")
        if role not in _ROLES:
            raise ValueError(f"unknown role {role!r}")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"{role} message without text content")
        messages.append({"role": role, "content": m["content"]})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise ValueError("conversation has no assistant reply")
    extra = {"subset": subset}
    if row.get("source"):
        extra["origin"] = row["source"]
    return RawSample(id=id, source=NAME, kind=KIND_DEFAULT, messages=messages, extra=extra)
