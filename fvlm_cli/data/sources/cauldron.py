"""`cauldron`: HuggingFaceM4/the_cauldron, image instruction data for stage 2.

Published layout: one folder per subset (`ai2d/`, `vqav2/`, ... 50 of them), each holding
`train-XXXXX-of-YYYYY.parquet` with columns
  images: list of {bytes, path}   (HF Image feature; usually one image, some subsets several, a few none)
  texts:  list of {user, assistant, source}   (one entry per turn)
Every turn is kept as alternating user/assistant messages. `opts.split` names subsets ("ai2d,vqav2");
none named means all of them. A row with several images (nlvr2, mimic_cgd, spot_the_diff, ...) is ONE
sample whose frames are those images in order (media_kind "images"; each image is one frame, none
replicated), all turns kept; the manifest counts such samples under counts.media.multi_image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

from fvlm_cli.data.sources import _hub
from fvlm_cli.data.sources.base import RawSample, SourceOptions
from fvlm_cli.errors import DataError

NAME = "cauldron"
KIND_DEFAULT = "sft"
HUB_REPO = "HuggingFaceM4/the_cauldron"


def iter_samples(input: Optional[str], opts: SourceOptions) -> Iterator[RawSample]:
    wanted = _hub.selectors(opts.split)
    patterns = [f"{s}/*.parquet" for s in wanted] if wanted else ["*/*.parquet"]
    root = _hub.resolve_root(input, opts, default_repo=HUB_REPO, allow_patterns=patterns)
    if root.is_file():
        subsets = [(root.parent.name, [root])]
    else:
        available = _hub.subset_dirs(root, ["*.parquet"])
        if not available:
            raise DataError(f"cauldron: no <subset>/*.parquet under {root} (expected the_cauldron layout)")
        subsets = [(name, _hub.glob_files(d, ["*.parquet"]))
                   for name, d in _hub.pick_subsets(available, wanted, "cauldron subset")]
    return _hub.take(_samples(subsets), opts.limit)


def _samples(subsets: list[tuple[str, list[Path]]]) -> Iterator[RawSample]:
    for subset, files in subsets:
        n = 0
        for path in files:
            for row in _hub.iter_parquet(path, ["images", "texts"], required=["texts"]):
                id = f"{subset}-{n:07d}"
                n += 1
                try:
                    yield _sample(id, subset, row)
                except _hub.BAD_ROW as e:
                    yield _hub.error_sample(id, NAME, KIND_DEFAULT, _hub.row_error(e))


def _sample(id: str, subset: str, row: dict) -> RawSample:
    messages = []
    for i, turn in enumerate(_hub.need(row, "texts")):
        if not isinstance(turn, dict) or not str(turn.get("user") or "").strip() \
                or not str(turn.get("assistant") or "").strip():
            raise ValueError(f"turn {i + 1} lacks a user or assistant text")
        messages.append({"role": "user", "content": turn["user"].strip()})
        messages.append({"role": "assistant", "content": turn["assistant"].strip()})
    images = [_hub.image_cell(im) for im in (row.get("images") or []) if im is not None]
    if any(im is None for im in images):
        raise ValueError("an image cell holds neither bytes nor a path")
    if len(images) > 1:
        media, media_kind = images, "images"
    else:
        media = images[0] if images else None
        media_kind = "image" if media is not None else None
    return RawSample(
        id=id,
        source=NAME,
        kind=KIND_DEFAULT,
        messages=messages,
        media=media,
        media_kind=media_kind,
        extra={"subset": subset, "n_images": len(images)},
    )
