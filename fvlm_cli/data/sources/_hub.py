"""Plumbing shared by the published-dataset sources.

- `resolve_root`: the `--input` is a local folder/file in the dataset's published layout, or a Hub dataset id
  fetched once with `huggingface_hub.snapshot_download(allow_patterns=...)` into `opts.cache_dir`; both are
  then read by the same code (archives in place, see `fvlm_cli.data.archives`). `--set revision=NAME`
  fetches another branch or commit (MVBench's `video` branch, the one lmms-eval reads).
- Readers: parquet row dicts (batched, so a 100 GB dataset never sits in memory) and JSON / JSONL records.
- `image_cell`: the HF `Image` feature as parquet stores it (`{"bytes", "path"}`), passed through undecoded.
- MCQ formatting: lettered options, the prompt every benchmark source writes, and the §3.2 MCQ extra keys.
"""

from __future__ import annotations

import json
import os
import re
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from fvlm_cli.data import archives
from fvlm_cli.data.sources.base import RawSample, SourceOptions
from fvlm_cli.errors import DataError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MCQ_INSTRUCTION = "Answer with the option's letter from the given choices directly."
DEFAULT_CACHE = "~/.cache/fvlm/hub"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_OPTION_PREFIX = re.compile(r"^\s*\(?([A-Z])[.):]\s*")


# --------------------------------------------------------------------------- input resolution

def _snapshot_download(**kwargs: Any) -> str:
    # Imported here: huggingface_hub is only needed when a Hub id is given (tests replace this function).
    from huggingface_hub import snapshot_download

    return snapshot_download(**kwargs)


def goes_to_hub(input: Optional[str]) -> bool:
    """Whether `resolve_root` would download: no input, or a Hub-id-shaped input that is not a local path."""
    return input is None or (not Path(input).expanduser().exists() and bool(_HUB_ID.match(input)))


def resolve_root(
    input: Optional[str],
    opts: SourceOptions,
    *,
    default_repo: str,
    allow_patterns: Optional[Sequence[str]] = None,
) -> Path:
    """A local path as-is, else a Hub dataset id downloaded (only `allow_patterns`) into the cache.

    `input=None` means the dataset's canonical Hub repo. The download lands in a folder laid out exactly as
    `hf download --local-dir` leaves it, and the source then reads it by the very code that reads a local copy
    (archives in place; nothing extracted next to them).
    """
    spec = input or default_repo
    path = Path(spec).expanduser()
    if path.exists():
        return path.absolute()  # media paths must survive the driver's worker processes
    if not _HUB_ID.match(spec):
        raise DataError(f"input not found: {spec}")
    return fetch_hub_dataset(spec, opts, allow_patterns=allow_patterns, local_missing=input is not None)


def fetch_hub_dataset(
    repo_id: str,
    opts: SourceOptions,
    *,
    allow_patterns: Optional[Sequence[str]] = None,
    local_missing: bool = False,
) -> Path:
    base = Path(opts.cache_dir or DEFAULT_CACHE).expanduser()
    revision = str(opts.extra.get("revision") or "").strip() or None  # `--set revision=video`: a branch or commit
    local_dir = base / (repo_id.replace("/", "--") + (f"@{revision.replace('/', '--')}" if revision else ""))
    try:
        root = _snapshot_download(
            repo_id=repo_id,
            repo_type="dataset",
            revision=revision,
            allow_patterns=list(allow_patterns) if allow_patterns else None,
            local_dir=str(local_dir),
        )
    except Exception as e:  # HTTP, offline, gated, missing repo: huggingface_hub raises many types, all fatal here
        where = f"no local path {repo_id!r} and " if local_missing else ""
        first = (str(e).strip().splitlines() or [""])[0]
        raise DataError(f"{where}cannot fetch Hub dataset {repo_id!r}: {type(e).__name__}: {first}") from e
    return Path(root).absolute()


# --------------------------------------------------------------------------- finding and reading files

def glob_files(root: Path, patterns: Iterable[str]) -> list[Path]:
    """Sorted, de-duplicated files under `root` matching any of the glob `patterns`; hidden folders (the
    `.cache/huggingface/` that `hf download --local-dir` leaves) are skipped."""
    found = {p for pattern in patterns for p in root.glob(pattern)
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)}
    return sorted(found, key=lambda p: p.as_posix())


def zip_archives(root: Path, patterns: Iterable[str]) -> list[tuple[Path, ...]]:
    """The zips under `root` matching `patterns` (globs of whole-zip names, e.g. "videos_chunked_*.zip"), each
    as a 1-tuple, plus split zips (`X_partaa`, `X_partab`, ...) whose joined name `X` matches, as part tuples."""
    patterns = list(patterns)
    whole = glob_files(root, patterns)
    split_globs = [f"{p[:-4] if p.endswith('.zip') else p}_part??" for p in patterns]
    groups, _ = archives.split_zip_groups(glob_files(root, split_globs))
    return [(p,) for p in whole] + groups


def subset_dirs(root: Path, patterns: Sequence[str]) -> dict[str, Path]:
    """{subset name: folder} for the immediate sub-folders of `root` holding files matching `patterns`.

    When `root` itself holds such files it is a single subset (the user pointed at one subset folder).
    """
    if glob_files(root, patterns):
        return {root.name: root}
    return {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")
            and glob_files(d, patterns)}


def pick_subsets(available: dict[str, Path], wanted: Sequence[str], what: str) -> list[tuple[str, Path]]:
    """The `wanted` subsets in the order given (all, sorted, when none named); unknown names are a DataError."""
    if not wanted:
        return sorted(available.items())
    unknown = [w for w in wanted if w not in available]
    if unknown:
        shown = ", ".join(sorted(available)[:12]) + (" ..." if len(available) > 12 else "")
        raise DataError(f"unknown {what} {', '.join(unknown)} (available: {shown or 'none'})")
    return [(w, available[w]) for w in wanted]


def parquet_schema_names(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError variants for non-parquet files
        raise DataError(f"{path}: not a readable parquet file ({type(e).__name__})") from e


def iter_parquet(path: Path, columns: Sequence[str], required: Sequence[str] = ()) -> Iterator[dict]:
    """Row dicts of `columns` (those present) from one parquet file, read in small batches.

    A file missing a `required` column is malformed as a whole: DataError naming what it does have.
    """
    import pyarrow.parquet as pq

    names = parquet_schema_names(path)
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(names)})")
    present = [c for c in columns if c in names]
    try:
        pf = pq.ParquetFile(path)
        # Small batches: rows carry image bytes, and a batch is materialised as Python objects.
        for batch in pf.iter_batches(batch_size=64, columns=present):
            yield from batch.to_pylist()
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot read parquet rows ({type(e).__name__}: {e})") from e


def iter_json_records(path: Path) -> Iterator[tuple[Any, Optional[str]]]:
    """(record, None) for each record of a JSON array file or a JSONL file; (None, reason) for a bad JSONL line.

    A JSON file that does not parse, or is not a list, is malformed as a whole (DataError).
    """
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line), None
                except json.JSONDecodeError as e:
                    yield None, f"{path.name} line {line_no}: invalid JSON ({e.msg})"
        return
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable JSON file ({e})") from e
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for record in data:
        yield record, None


def image_cell(cell: Any, root: Optional[Path] = None) -> Any:
    """The media for an HF `Image` cell without decoding it: bytes, else a path (made absolute under `root`)."""
    if cell is None:
        return None
    if isinstance(cell, (bytes, bytearray)):
        return bytes(cell)
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return bytes(cell["bytes"])
        cell = cell.get("path")
        if not cell:
            return None
    if isinstance(cell, str):
        if root is not None and not cell.startswith(("http://", "https://")) and not os.path.isabs(cell):
            return str(root / cell)
        return cell
    raise ValueError(f"unrecognised image cell of type {type(cell).__name__}")


# --------------------------------------------------------------------------- options and samples

def selectors(split: Optional[str]) -> list[str]:
    """`opts.split` as a list: comma-separated names, blanks dropped ("a, b" -> ["a", "b"])."""
    return [s.strip() for s in (split or "").split(",") if s.strip()]


# What a malformed row raises inside a source's row converter: caught, and the row yielded with `error`.
BAD_ROW = (ValueError, KeyError, TypeError, AttributeError, IndexError)


def row_error(e: Exception) -> str:
    if isinstance(e, KeyError):
        return f"missing field {e.args[0]!r}"
    return str(e) or type(e).__name__


def need(row: Any, key: str) -> Any:
    """row[key], which must be present and not blank (ValueError otherwise: the row is malformed)."""
    if not isinstance(row, dict):
        raise ValueError(f"row is a {type(row).__name__}, not an object")
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, list) and not value):
        raise ValueError(f"missing or empty field {key!r}")
    return value


def take(samples: Iterable[RawSample], limit: Optional[int]) -> Iterator[RawSample]:
    return iter(samples) if limit is None else islice(samples, max(0, limit))


def error_sample(id: str, source: str, kind: str, reason: str, label: Optional[str] = None) -> RawSample:
    """A row recorded as a failure; `label` names its input as the user knows it (the video a row names)."""
    return RawSample(id=id, source=source, kind=kind, messages=[], error=reason, label=label)


class MissingMedia(ValueError):
    """A row whose media is nowhere in the dataset: the failure row names that media (`label`)."""

    def __init__(self, reason: str, label: str):
        super().__init__(reason)
        self.label = label


def strip_option_letters(options: Sequence[str]) -> list[str]:
    """["A. red", "B. blue"] -> ["red", "blue"]. Letters must run A, B, C... in order (else ValueError);
    options without any prefix are returned stripped as they are."""
    matches = [_OPTION_PREFIX.match(str(o)) for o in options]
    if not any(matches):
        return [str(o).strip() for o in options]
    out = []
    for i, (option, m) in enumerate(zip(options, matches)):
        if m is None or m.group(1) != LETTERS[i]:
            raise ValueError(f"option {i + 1} {option!r} is not lettered {LETTERS[i]}")
        out.append(str(option)[m.end():].strip())
    return out


def mcq_prompt(question: str, options: Sequence[str]) -> str:
    lettered = "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(options))
    return f"{question.strip()}\n{lettered}\n{MCQ_INSTRUCTION}"


def mcq_sample(
    *,
    id: str,
    source: str,
    question: str,
    options: Sequence[str],
    answer_index: int,
    category: str,
    cluster: str,
    media: Any = None,
    media_kind: Optional[str] = None,
    extra: Optional[dict] = None,
) -> RawSample:
    """The §3.2 MCQ sample: user = question + lettered options + instruction, assistant = the answer letter."""
    if not 2 <= len(options) <= len(LETTERS):
        raise ValueError(f"need 2..{len(LETTERS)} options, got {len(options)}")
    if not 0 <= answer_index < len(options):
        raise ValueError(f"answer index {answer_index} outside {len(options)} options")
    letter = LETTERS[answer_index]
    options = [str(o) for o in options]
    return RawSample(
        id=id,
        source=source,
        kind="mcq",
        messages=[
            {"role": "user", "content": mcq_prompt(question, options)},
            {"role": "assistant", "content": letter},
        ],
        media=media,
        media_kind=media_kind,
        extra={"question": question.strip(), "options": options, "answer": letter,
               "category": category, "cluster": cluster, **(extra or {})},
    )


def json_task_rows(tasks, name: str, kind: str, make):
    """Rows of per-task JSON annotation files (MVBench, MLVU): `make(task, id, row)` -> RawSample; a bad
    row becomes an error sample with id `<task>-<index>`."""
    for task, path in tasks:
        for i, (row, bad) in enumerate(iter_json_records(path)):
            id = f"{task}-{i:04d}"
            try:
                if bad:
                    raise ValueError(bad)
                yield make(task, id, row)
            except BAD_ROW as e:
                yield error_sample(id, name, kind, row_error(e), getattr(e, "label", None))


def candidates_and_answer(row: dict) -> tuple[list[str], str]:
    """The option texts and the answer text of a `candidates`/`answer` row; the answer must be a candidate."""
    candidates = [str(c) for c in need(row, "candidates")]
    answer = str(need(row, "answer"))
    if answer not in candidates:
        raise ValueError(f"answer {answer!r} is not one of the candidates")
    return candidates, answer
