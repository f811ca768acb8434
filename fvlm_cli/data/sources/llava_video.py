"""`llava-video`: lmms-lab/LLaVA-Video-178K, video instruction data for stage 3.

Published layout: one folder per subset (`0_30_s_academic_v0_1/`, `1_2_m_youtube_v0_1/`, `llava_hound/`, ...)
holding annotation JSON files (`*_cap_processed.json`, `*_oe_*_qa_processed.json`, `*_mc_*_qa_processed.json`),
each a list of rows
  {id, conversations: [{from: human|gpt, value}, ...], video: path relative to the subset folder, data_source}
and the videos as `<subset>/<subset>_videos_N.tar.gz` archives whose members are those relative paths.
gzip has no random access, so each archive is extracted ONCE, in one ordered pass, into
`<cache-dir>/archives/<archive>-<key>/` (outside the input, which is never written to); this costs about the
archives' own size on disk (~5.3 GB per archive; mp4 does not compress). Videos already unpacked into the
subset folder are used as they are. A row whose video is in no archive is a failure row naming
`<subset>/<video>`; failure rows name archive members as `<archive>.tar.gz:<path>`.

Which subsets: a local copy is read whole (every subset folder present; `--split` narrows it), except folders
that are not training subsets and one whose videos live elsewhere: `gpt4o_caption_prompt/` and
`gpt4o_qa_prompt/` hold the prompts and demonstrations the annotations were generated with (never read), and
`llava_hound/` holds only its annotation file: its videos are ShareGPTVideo/train_video_and_instruction's frame
folders, which users convert to mp4 themselves. `llava_hound` is read when `--split` names it or when its folder
holds videos (a sub-folder or an archive); its rows without a video say where the videos are. A Hub id
fetches `DEFAULT_SUBSETS` (the two 0-30 s subsets: 0_30_s_academic_v0_1 and 0_30_s_youtube_v0_1, about
100 GB of archives) unless `--split` names subsets. `--set annotations=cap` (or `qa`, `oe`, `mc`) keeps only
annotation files whose name contains it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Optional

from fvlm_cli.data import archives
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
    fetch = wanted or DEFAULT_SUBSETS
    patterns = [f"{s}/{ext}" for s in fetch for ext in ("*.json", "*.jsonl", "*_videos_*.tar.gz")]
    root = _hub.resolve_root(input, opts, default_repo=HUB_REPO, allow_patterns=patterns)
    if root.is_file():
        subsets = [(root.parent.name, root.parent, [root])]
    else:
        available = _hub.subset_dirs(root, _ANNOTATIONS)
        if list(available.values()) != [root]:  # the repo (not one subset folder the user pointed at)
            available = _readable(available, wanted)
        if not available:
            raise DataError(f"llava-video: no <subset>/*.json annotations under {root}")
        subsets = [(name, d, _hub.glob_files(d, _ANNOTATIONS))
                   for name, d in _hub.pick_subsets(available, wanted, "llava-video subset")]
    only = opts.extra.get("annotations")
    if only:
        subsets = [(name, d, [f for f in files if only in f.name]) for name, d, files in subsets]
    cache = archives.archive_cache(opts.cache_dir)
    return _hub.take(_samples(subsets, cache, root if root.is_dir() else root.parent), opts.limit)


DEFAULT_SUBSETS = ["0_30_s_academic_v0_1", "0_30_s_youtube_v0_1"]
NOT_SUBSETS = ("gpt4o_caption_prompt", "gpt4o_qa_prompt")  # generation prompts and demonstrations, no rows
# Subsets whose videos the repo does not ship: where they are, said on their failure rows.
VIDEOS_ELSEWHERE = {"llava_hound": "its videos are not in this repo: ShareGPTVideo/train_video_and_instruction "
                                   "holds them as frame folders; convert them to mp4 under llava_hound/"}


def _has_videos(folder: Path) -> bool:
    """Unpacked videos (a sub-folder) or a video archive in a subset folder."""
    return any(p.is_dir() or p.name.endswith((".tar.gz", ".tgz", ".tar")) for p in folder.iterdir())


def _readable(available: dict[str, Path], wanted: list[str]) -> dict[str, Path]:
    named_prompts = [w for w in wanted if w in NOT_SUBSETS]
    if named_prompts:
        raise DataError(f"llava-video: {', '.join(named_prompts)} holds generation prompts, not training rows")
    return {name: d for name, d in available.items() if name not in NOT_SUBSETS
            and (name not in VIDEOS_ELSEWHERE or name in wanted or _has_videos(d))}


class _Videos:
    """A subset's videos: files in the subset folder, else members of its `*_videos_N.tar.gz`, extracted once
    into the cache (lazily: only when the subset is reached)."""

    def __init__(self, folder: Path, cache: Path, input_root: Path):
        self.folder, self.cache, self.input_root = folder, cache, input_root
        self.index: Optional[dict[str, tuple[Path, str]]] = None

    def _build(self) -> dict[str, tuple[Path, str]]:
        index = {}
        tars = _hub.glob_files(self.folder, ["*.tar.gz", "*.tgz", "*.tar"])
        for tar in sorted(tars, key=lambda p: _natural(p.name)):
            dest, members = archives.extract_tar_cached(tar, self.cache, self.input_root)
            for name in members:
                index.setdefault(name.lstrip("./"), (dest / name, f"{tar.name}:{name}"))
        return index

    def find(self, video: str) -> tuple[str, Optional[str]]:
        path = self.folder / video
        if path.is_file():
            return str(path), None
        if self.index is None:
            self.index = self._build()
        hit = self.index.get(video.lstrip("./"))
        if hit is None:
            elsewhere = VIDEOS_ELSEWHERE.get(self.folder.name)
            raise _hub.MissingMedia(f"video {video} is in no {self.folder.name}/*_videos_*.tar.gz"
                                    + (f" ({elsewhere})" if elsewhere else ""), f"{self.folder.name}/{video}")
        return str(hit[0]), hit[1]


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _samples(subsets: list[tuple[str, Path, list[Path]]], cache: Path, input_root: Path) -> Iterator[RawSample]:
    for subset, folder, files in subsets:
        videos = _Videos(folder, cache, input_root)
        for path in files:
            for i, (row, bad) in enumerate(_hub.iter_json_records(path)):
                id = f"{subset}/{path.stem}/{i}"
                try:
                    if bad:
                        raise ValueError(bad)
                    yield _sample(id, subset, videos, row)
                except _hub.BAD_ROW as e:
                    yield _hub.error_sample(id, NAME, KIND_DEFAULT, _hub.row_error(e), getattr(e, "label", None))


def _sample(id: str, subset: str, videos: _Videos, row: dict) -> RawSample:
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
    media, label = videos.find(str(_hub.need(row, "video")))
    return RawSample(
        id=id,
        source=NAME,
        kind=KIND_DEFAULT,
        messages=messages,
        media=media,
        label=label,
        media_kind="video",
        extra={"subset": subset, "orig_id": row.get("id"), "data_source": row.get("data_source")},
    )
