"""`synthetic`: procedural videos made offline (coloured shapes that move) with captions, SFT turns,
multiple-choice questions (colour, shape, direction, count) and preference pairs, plus text-only chat.
It needs no --input and no network: the speedrun (SPEC §8) and the tests are built on it.

Splits (`--split`, default train) hold disjoint videos: video k of a split is `make_video(offset + k)`
with offsets train 0, val 1,000,000, bench 2,000,000, so no val/bench video is ever trained on.

Knobs (`--set key=value`), with their defaults:
    n_videos   200 (train), 50 (val, bench)     seconds  8     fps   4      size  64
    n_text     100 (train), 20 (val), 0 (bench) text-only samples
    shuffle_options  0: MCQ options in a fixed order per category (the letter names what was seen);
                     1: shuffled with balanced answer letters (tests in-context option matching)
    kinds      all of caption,sft,mcq,dpo,text (train, val); mcq (bench)  - comma-separated filter
The mp4 files go to `media_dir` (the driver sets OUT/_media), one folder per split and parameters, and are
reused by a re-run. Samples of one video are consecutive (the workers decode each video once).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

from fvlm_cli.data.sources import _hub
from fvlm_cli.data.sources.base import RawSample, SourceOptions
from fvlm_cli.errors import DataError

NAME = "synthetic"
KIND_DEFAULT = "caption"
REQUIRES_INPUT = False
WRITES_MEDIA = True

KINDS = ("caption", "sft", "mcq", "dpo", "text")
SPLITS = {"train": 0, "val": 1_000_000, "bench": 2_000_000}  # video index offsets: disjoint splits
_DEFAULTS = {
    "train": {"n_videos": 200, "n_text": 100, "kinds": ",".join(KINDS)},
    "val": {"n_videos": 50, "n_text": 20, "kinds": ",".join(KINDS)},
    "bench": {"n_videos": 50, "n_text": 0, "kinds": "mcq"},
}
_COMMON = {"seconds": 8, "fps": 4, "size": 64, "shuffle_options": 0}
_EXTRA_KEYS = ("media_dir",)
_MCQ_KEYS = ("question", "options", "answer", "category", "cluster")
_DPO_KEYS = ("chosen", "rejected")


def knobs(opts: SourceOptions) -> dict[str, Any]:
    """The resolved knobs for `opts` (split defaults + --set values); unknown keys are a DataError."""
    split = opts.split or "train"
    if split not in SPLITS:
        raise DataError(f"synthetic: unknown split {split!r} (choose {', '.join(SPLITS)})")
    values: dict[str, Any] = {**_COMMON, **_DEFAULTS[split]}
    unknown = [k for k in opts.extra if k not in values and k not in _EXTRA_KEYS]
    if unknown:
        raise DataError(f"synthetic: unknown option(s) {', '.join(unknown)} (valid: {', '.join(values)})")
    values.update({k: v for k, v in opts.extra.items() if k in values})
    for key in ("n_videos", "n_text", "seconds", "fps", "size", "shuffle_options"):
        try:
            values[key] = int(values[key])
        except (TypeError, ValueError):
            raise DataError(f"synthetic: {key} must be an integer, got {values[key]!r}") from None
        if values[key] < (0 if key in ("n_videos", "n_text", "shuffle_options") else 1):
            raise DataError(f"synthetic: {key} must be positive, got {values[key]}")
    kinds = values["kinds"]
    kinds = [k.strip() for k in (kinds.split(",") if isinstance(kinds, str) else kinds) if str(k).strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise DataError(f"synthetic: kinds must be a comma-separated subset of {','.join(KINDS)}, got {values['kinds']!r}")
    values["kinds"] = kinds
    values["split"] = split
    return values


def iter_samples(input: Optional[str], opts: SourceOptions) -> Iterator[RawSample]:
    if input:
        raise DataError("synthetic makes its own videos: drop --input (use --set n_videos=N, --split train|val|bench)")
    from fvlm_cli.data import synthetic

    k = knobs(opts)
    base = Path(opts.extra.get("media_dir") or Path(tempfile.gettempdir()) / "fvlm-synthetic")
    # the task's version is in the name: videos cached by an earlier generator (same ids, same labels) are not reused
    folder = base / f"{synthetic.TASK}-{k['split']}-seed{opts.seed}-{k['seconds']}s-{k['fps']}fps-{k['size']}px"
    return _hub.take(_samples(k, opts.seed, folder), opts.limit)


def _samples(k: dict, seed: int, folder: Path) -> Iterator[RawSample]:
    from fvlm_cli.data import synthetic

    kinds = set(k["kinds"])
    if kinds - {"text"}:
        for j in range(k["n_videos"]):
            video = synthetic.make_video(SPLITS[k["split"]] + j, seed=seed, seconds=k["seconds"], fps=k["fps"],
                                         size=k["size"])
            path = folder / f"{video.id}.mp4"
            records = [r for r in synthetic.samples_for(video, path, seed=seed, shuffle_options=bool(k["shuffle_options"])) if r["kind"] in kinds]
            if not records:
                continue
            if not path.exists():  # written once; a re-run (resume) reuses the file
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".tmp{os.getpid()}-{path.name}")  # keeps .mp4: the muxer goes by extension
                synthetic.write_video_file(video, tmp)
                os.replace(tmp, path)
            for record in records:
                yield _raw(record, media=str(path))
    if "text" in kinds and k["n_text"]:
        # a different seed per split, so val text is not the train text
        for record in synthetic.text_samples(k["n_text"], seed=seed * 7 + SPLITS[k["split"]]):
            yield _raw(record, media=None)


def _raw(record: dict, media: Optional[str]) -> RawSample:
    kind = record["kind"]
    keys = _MCQ_KEYS if kind == "mcq" else _DPO_KEYS if kind == "dpo" else ()
    return RawSample(id=str(record["id"]), source=NAME, kind=kind, messages=record["messages"],
                     media=media, media_kind="video" if media else None,
                     extra={key: record.get(key) for key in keys})
