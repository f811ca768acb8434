"""`video-mme`: lmms-lab/Video-MME, 2,700 MCQs over 900 short/medium/long videos.

Published layout: `videomme/test-00000-of-00001.parquet` with columns
  video_id, duration (short|medium|long), domain, sub_category, url, videoID, question_id, task_type,
  question, options (["A. ...", "B. ...", ...]), answer (a letter)
and the videos in `videos_chunked_NN.zip` archives at the repo root, members `data/<videoID>.mp4` (a few
`.mkv`); `subtitle.zip` is not read. The zips are read in place (each member opened as a file object),
from a local copy and from a Hub id alike; an already unzipped `data/` folder works too. A question whose
video is in no archive is one failure row naming the video.
Options lose their "A. " prefixes (the letters must run A, B, C, D in order, so the answer letter still
points at the same text). `opts.split` filters durations ("short" or "short,medium"); category = task_type,
cluster = videoID; the shard keeps duration, domain, sub_category, video_id and videoID (bench reports by them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

from fvlm_cli.data import archives
from fvlm_cli.data.sources import _hub
from fvlm_cli.data.sources.base import RawSample, SourceOptions
from fvlm_cli.errors import DataError

NAME = "video-mme"
KIND_DEFAULT = "mcq"
HUB_REPO = "lmms-lab/Video-MME"

DURATIONS = ("short", "medium", "long")
_VIDEO_EXTS = (".mp4", ".MP4", ".mkv", ".webm")
_COLUMNS = ["video_id", "duration", "domain", "sub_category", "videoID", "question_id", "task_type",
            "question", "options", "answer"]


def iter_samples(input: Optional[str], opts: SourceOptions) -> Iterator[RawSample]:
    durations = _hub.selectors(opts.split)
    unknown = [d for d in durations if d not in DURATIONS]
    if unknown:
        raise DataError(f"video-mme: split selects durations {'/'.join(DURATIONS)}, got {', '.join(unknown)}")
    root = _hub.resolve_root(input, opts, default_repo=HUB_REPO, allow_patterns=ALLOW_PATTERNS)
    if root.is_file():
        files, root = [root], root.parent.parent
    else:
        files = _hub.glob_files(root, ["videomme/*.parquet"]) or _hub.glob_files(root, ["*.parquet"])
    if not files:
        raise DataError(f"video-mme: no videomme/*.parquet under {root}")
    return _hub.take(_samples(VideoFinder(root), files, set(durations)), opts.limit)


ALLOW_PATTERNS = ["videomme/*.parquet", "videos_chunked_*.zip"]


class VideoFinder:
    """videoID -> the video: a member `data/<id>.<ext>` of a `videos_chunked_*.zip`, else `data/<id>.<ext>`."""

    def __init__(self, root: Path):
        self.root = root
        self.members = {}
        zips = _hub.zip_archives(root, ["videos_chunked_*.zip"])
        for name, member in archives.index_zips(zips).items():
            path = Path(name)
            if not member.is_dir and path.suffix in _VIDEO_EXTS:
                self.members.setdefault(path.stem, member)
        self.where = f"data/ or {len(zips)} videos_chunked_*.zip" if zips else "data/ (no videos_chunked_*.zip found)"

    def find(self, video_id: str):
        for ext in _VIDEO_EXTS:
            path = self.root / "data" / f"{video_id}{ext}"
            if path.is_file():
                return str(path)
        member = self.members.get(video_id)
        if member is None:
            raise _hub.MissingMedia(f"video {video_id} is in neither {self.where}", f"data/{video_id}.mp4")
        return member


def _samples(videos: VideoFinder, files: list[Path], durations: set[str]) -> Iterator[RawSample]:
    n = 0
    for path in files:
        for row in _hub.iter_parquet(path, _COLUMNS, required=["videoID", "question", "options", "answer"]):
            if durations and row.get("duration") not in durations:
                continue
            id = str(row.get("question_id") or f"row-{n:05d}")
            n += 1
            try:
                yield _sample(videos, id, row)
            except _hub.BAD_ROW as e:
                yield _hub.error_sample(id, NAME, KIND_DEFAULT, _hub.row_error(e), getattr(e, "label", None))


def _sample(videos: VideoFinder, id: str, row: dict) -> RawSample:
    options = _hub.strip_option_letters(list(_hub.need(row, "options")))
    answer = str(_hub.need(row, "answer")).strip().upper()
    if answer not in _hub.LETTERS[: len(options)]:
        raise ValueError(f"answer {row['answer']!r} is not a letter of the {len(options)} options")
    video_id = str(_hub.need(row, "videoID"))
    extra = {k: row[k] for k in ("duration", "domain", "sub_category", "video_id") if row.get(k) is not None}
    extra["videoID"] = video_id
    media = videos.find(video_id)
    return _hub.mcq_sample(
        id=id,
        source=NAME,
        question=str(_hub.need(row, "question")),
        options=options,
        answer_index=_hub.LETTERS.index(answer),
        category=str(row.get("task_type") or "unknown"),
        cluster=video_id,
        media=media,
        media_kind="video",
        extra=extra,
    )
