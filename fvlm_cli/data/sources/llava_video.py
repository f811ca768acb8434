"""`llava-video`: lmms-lab/LLaVA-Video-178K, video instruction data for stage 3.

Published layout: one folder per subset (`0_30_s_academic_v0_1/`, `1_2_m_youtube_v0_1/`, `llava_hound/`, ...)
holding annotation JSON files (`*_cap_processed.json`, `*_oe_*_qa_processed.json`, `*_mc_*_qa_processed.json`),
each a list of rows
  {id, conversations: [{from: human|gpt, value}, ...], video: path relative to the subset folder, data_source}
and the videos as `*_videos_N.tar.gz` archives that extract into the subset folder (locally: already
extracted). From the Hub the subset's archives are downloaded and extracted, so `opts.split` (comma-separated
subset names) is required there: the whole dataset is well over a terabyte.
`opts.extra["annotations"]` (e.g. "cap" or "qa") keeps only annotation files whose name contains it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Optional

from fvlm_cli.data.sources import _hub
from fvlm_cli.data.sources.base import RawSample, SourceOptions
from fvlm_cli.errors import DataError

NAME = "llava-video"
KIND_DEFAULT = "sft"
HUB_REPO = "lmms-lab/LLaVA-Video-178K"

_ANNOTATIONS = ["*.json", "*.jsonl"]
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
# The LLaVA placeholder marks where visual tokens went in LLaVA's own prompt; fvlm places frames itself.
_PLACEHOLDER = re.compile(r"[ \t]*<(?:image|video)>[ \t]*\n?")


def iter_samples(input: Optional[str], opts: SourceOptions) -> Iterator[RawSample]:
    wanted = _hub.selectors(opts.split)
    if _hub.goes_to_hub(input) and not wanted:
        raise DataError("llava-video from the Hub needs a split naming subset(s), e.g. 0_30_s_academic_v0_1")
    patterns = [f"{s}/{ext}" for s in wanted for ext in ("*.json", "*.jsonl", "*.tar.gz", "*.tar")]
    root = _hub.resolve_root(input, opts, default_repo=HUB_REPO, allow_patterns=patterns,
                             archives=(".tar.gz", ".tar"))
    if root.is_file():
        subsets = [(root.parent.name, root.parent, [root])]
    else:
        available = _hub.subset_dirs(root, _ANNOTATIONS)
        if not available:
            raise DataError(f"llava-video: no <subset>/*.json annotations under {root}")
        subsets = [(name, d, _hub.glob_files(d, _ANNOTATIONS))
                   for name, d in _hub.pick_subsets(available, wanted, "llava-video subset")]
    only = opts.extra.get("annotations")
    if only:
        subsets = [(name, d, [f for f in files if only in f.name]) for name, d, files in subsets]
    return _hub.take(_samples(subsets), opts.limit)


def _samples(subsets: list[tuple[str, Path, list[Path]]]) -> Iterator[RawSample]:
    for subset, folder, files in subsets:
        for path in files:
            for i, (row, bad) in enumerate(_hub.iter_json_records(path)):
                id = f"{subset}/{path.stem}/{i}"
                try:
                    if bad:
                        raise ValueError(bad)
                    yield _sample(id, subset, folder, row)
                except _hub.BAD_ROW as e:
                    yield _hub.error_sample(id, NAME, KIND_DEFAULT, _hub.row_error(e))


def _sample(id: str, subset: str, folder: Path, row: dict) -> RawSample:
    messages = []
    for turn in _hub.need(row, "conversations"):
        role = _ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            raise ValueError(f"unknown speaker {turn.get('from')!r}")
        text = str(turn.get("value") or "")
        if role == "user":
            text = _PLACEHOLDER.sub("", text)
        messages.append({"role": role, "content": text.strip()})
    roles = [m["role"] for m in messages]
    if "user" not in roles or "assistant" not in roles:
        raise ValueError("conversation needs a human and a gpt turn")
    video = str(_hub.need(row, "video"))
    return RawSample(
        id=id,
        source=NAME,
        kind=KIND_DEFAULT,
        messages=messages,
        media=str(folder / video),
        media_kind="video",
        extra={"subset": subset, "orig_id": row.get("id"), "data_source": row.get("data_source")},
    )
