"""What every dataset source yields: `RawSample`s, cheap to list, decoded later by the precompute driver.

A source module exposes:

    NAME: str                      # the `fvlm precompute NAME` argument
    KIND_DEFAULT: str              # caption | sft | text | dpo | mcq
    def iter_samples(input: str | None, opts: SourceOptions) -> Iterator[RawSample]

`iter_samples` must be deterministic (same input -> same samples in the same order), must not decode
media (the driver does that in worker processes), and must raise `DataError` for a missing or
malformed input as a whole. A single bad row is yielded anyway (or as a RawSample with `error`
set) so the driver records it in failures.jsonl.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from fvlm_cli.settings import MediaConfig


@dataclass
class SourceOptions:
    media: MediaConfig = field(default_factory=MediaConfig)  # the frame sampling policy (fps, max_frames, image_size)
    limit: Optional[int] = None          # stop after this many samples (before --part split)
    seed: int = 0
    cache_dir: Optional[str] = None      # where downloads / Hub snapshots go
    split: Optional[str] = None          # dataset split/subset where the source has several
    extra: dict[str, Any] = field(default_factory=dict)  # source-specific knobs (e.g. synthetic n_videos)


@dataclass
class RawSample:
    id: str                                   # unique within the source, stable across runs
    source: str                               # source NAME
    kind: str                                 # caption | sft | text | dpo | mcq
    messages: list[dict[str, str]]            # [{"role": "user"|"assistant"|"system", "content": str}]
    media: Any = None                         # local path, http(s) URL, bytes, PIL.Image, an archives.Member
                                              # (read in place), or a list of images (multi-image); None = text-only
    media_kind: Optional[str] = None          # "video" | "image" | "frames" | "images" | None (auto)
    extra: dict[str, Any] = field(default_factory=dict)  # DPO: chosen, rejected; MCQ: question, options, answer,
    # category, cluster; "window": [start, end] s to sample inside; any other JSON-able key is kept in the shard
    error: Optional[str] = None               # set when the row itself is malformed: recorded, not decoded
    label: Optional[str] = None               # the input as the user knows it (URL, "archive.zip:member",
                                              # the video a row names) when `media` is not that
