"""What `fvlm caption` reads: media files, folders (recursive), lists (JSONL / CSV / TXT) and shard sets.

Everything becomes a list of *units* that background workers take in turn:
  Item        one video or image file (with an optional id and prompt from a list row)
  ShardUnit   one WebDataset tar of an fvlm shard set; its samples are read with `data.shards.iter_shard_samples`

Inputs are named as the user knows them (the path, `LIST:LINE` for a bad list row, `SHARD.tar#KEY` for a shard
sample); that name is the resume key of `--out`. A path that does not exist or a bad list row is an error record,
never a failed run: the other inputs are still captioned.

Lists: JSONL rows are objects whose media path is under `path`, `video`, `image`, `media` or `file`, with
optional `id` and `prompt` (or `question`); CSV files have a header with the same column names; TXT files hold
one path per line. Relative paths are taken from the list's folder (else the working directory).
A folder is a shard set when it holds `manifest.json` or only `.tar` files; otherwise every video and image
under it (recursively, hidden files skipped, sorted) is an input.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fvlm_cli.data.media import IMAGE_EXTS, VIDEO_EXTS

MEDIA_EXTS = VIDEO_EXTS | IMAGE_EXTS
LIST_EXTS = (".jsonl", ".csv", ".txt")
PATH_KEYS = ("path", "video", "image", "media", "file")


def done_key(input: str, id=None, prompt: Optional[str] = None) -> str:
    """What --out resumes by: the input, plus the list row's id (else its prompt) when it has one, since a list may
    ask one video several questions."""
    if id not in (None, ""):
        return f"{input}\x00id={id}"
    return f"{input}\x00prompt={prompt}" if prompt else input


def key_input(key: str) -> str:
    return key.split("\x00", 1)[0]


@dataclass
class Item:
    input: str                    # the name results carry
    path: str                     # the file to decode
    prompt: Optional[str] = None  # from a list row (overrides --prompt)
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        """What --out resumes by (`done_key`)."""
        return done_key(self.input, self.extra.get("id"), self.prompt)


@dataclass
class ShardUnit:
    path: str                     # one .tar
    samples: Optional[int] = None  # from the manifest, when it has one


@dataclass
class Inputs:
    units: list = field(default_factory=list)     # Item | ShardUnit
    errors: list = field(default_factory=list)    # {"input", "error"} for paths/rows that cannot even be listed

    @property
    def known_total(self) -> Optional[int]:
        """How many inputs there are, when every shard's sample count is known."""
        n = 0
        for u in self.units:
            if isinstance(u, ShardUnit):
                if u.samples is None:
                    return None
                n += u.samples
            else:
                n += 1
        return n


    def count_done(self, done: frozenset) -> int:
        """How many of these inputs are among `done` (the inputs an --out file already holds)."""
        if not done:
            return 0
        tars = {u.path for u in self.units if isinstance(u, ShardUnit)}
        files = sum(1 for u in self.units if isinstance(u, Item) and u.key in done)
        shard_inputs = (key_input(d) for d in done)
        return files + sum(1 for d in shard_inputs if "#" in d and d.rsplit("#", 1)[0] in tars)


def shard_input(tar: str, key: str) -> str:
    return f"{tar}#{key}"


def resolve(args: list[str]) -> Inputs:
    """Expand the command-line arguments (module docstring)."""
    out = Inputs()
    for arg in args:
        p = Path(arg)
        if not p.exists():
            out.errors.append({"input": arg, "error": "media file not found"})
        elif p.is_dir():
            _folder(p, arg, out)
        elif p.suffix.lower() == ".tar":
            out.units.append(ShardUnit(str(p)))
        elif p.suffix.lower() in LIST_EXTS:
            _list(p, out)
        else:
            out.units.append(Item(str(p), arg))  # `./clip.mp4` and `clip.mp4` are one input (one resume key)
    return out


def _folder(p: Path, arg: str, out: Inputs) -> None:
    files = sorted(f for f in p.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts))
    tars = [f for f in files if f.suffix.lower() == ".tar"]
    if (p / "manifest.json").exists() or (tars and all(f.suffix.lower() in (".tar", ".json", ".jsonl") for f in files)):
        _shard_set(p, out)
        return
    media = [f for f in files if f.suffix.lower() in MEDIA_EXTS]
    if not media:
        out.errors.append({"input": arg, "error": "no video or image files in this folder"})
    out.units += [Item(str(f), str(f)) for f in media]


def _shard_set(p: Path, out: Inputs) -> None:
    from fvlm_cli.data.shards import read_manifest, shard_paths
    from fvlm_cli.errors import DataError

    try:
        counts = {}
        if (p / "manifest.json").exists():
            counts = {str(p / s["path"]): s.get("samples") for s in read_manifest(p)["shards"]}
        paths = shard_paths(p)
    except DataError as e:
        out.errors.append({"input": str(p), "error": str(e)})
        return
    if not paths:
        out.errors.append({"input": str(p), "error": "shard set holds no .tar files"})
    for t in paths:
        if t.exists():
            out.units.append(ShardUnit(str(t), counts.get(str(t))))
        else:
            out.errors.append({"input": str(t), "error": "shard listed in manifest.json is missing"})


def _list(p: Path, out: Inputs) -> None:
    try:
        text = p.read_text(encoding="utf-8-sig")  # Excel's "CSV UTF-8" starts with a byte-order mark
    except (OSError, UnicodeDecodeError) as e:
        out.errors.append({"input": str(p), "error": f"cannot read list ({e})"})
        return
    suffix = p.suffix.lower()
    if suffix == ".csv":
        rows = [(i + 2, r) for i, r in enumerate(csv.DictReader(text.splitlines()))]
    elif suffix == ".txt":
        rows = [(i + 1, {"path": line.strip()}) for i, line in enumerate(text.splitlines())
                if line.strip() and not line.lstrip().startswith("#")]
    else:
        rows = []
        for i, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                out.errors.append({"input": f"{p}:{i + 1}", "error": f"not a JSON object ({e})"})
                continue
            rows.append((i + 1, row))
    for line, row in rows:
        name = f"{p}:{line}"
        if not isinstance(row, dict):
            out.errors.append({"input": name, "error": "row is not an object"})
            continue
        raw = next((row[k] for k in PATH_KEYS if row.get(k)), None)
        if not isinstance(raw, str):
            out.errors.append({"input": name, "error": f"row has no media path (one of: {', '.join(PATH_KEYS)})"})
            continue
        path = Path(raw).expanduser()
        if not path.is_absolute() and (p.parent / path).exists():
            path = p.parent / path
        extra = {"id": row["id"]} if row.get("id") not in (None, "") else {}
        prompt = row.get("prompt") or row.get("question") or None
        if not path.exists():
            out.errors.append({"input": str(path), "error": "media file not found", **extra})
            continue
        out.units.append(Item(str(path), str(path), prompt, extra))
