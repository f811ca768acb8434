"""`mvbench`: OpenGVLab/MVBench, 20 short-video MCQ tasks (4,000 questions).

Published layout: `json/<task>.json` (a list of {video, question, candidates, answer[, start, end]}, answer
being the text of one candidate) and the videos under `video/` (on the Hub as zip archives, extracted here).
Each task reads its videos from one folder, as the official evaluation maps them. The current release ships
pre-cut segments (`star/Charades_segment`, `tvqa/video_fps3_hq_segment`, ...); the original one kept whole
videos with a `start`/`end` bound in seconds (`star/Charades_v1_480`, `sta/sta_video`) and TVQA as 3 fps frame
folders (`tvqa/frames_fps3_hq/<clip>/*.jpg`). Both are found: the first folder that holds the row's video wins.
A frame folder is passed as a directory with media_kind "frames"; an original-layout bound is kept in
extra["bound"] = [start, end] (seconds) for the media loader, never applied to pre-cut segments.
`opts.split` names tasks ("action_sequence,scene_transition"); none named means all. category = task,
cluster = the video path, so the standard error is clustered by video.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, NamedTuple, Optional

from fvlm_cli.data.sources import _hub
from fvlm_cli.data.sources.base import RawSample, SourceOptions
from fvlm_cli.errors import DataError

NAME = "mvbench"
KIND_DEFAULT = "mcq"
HUB_REPO = "OpenGVLab/MVBench"


class _Folder(NamedTuple):
    path: str        # relative to video/ (or to the root, where the Hub zips were extracted flat)
    kind: str        # "video" | "frames"
    bounded: bool    # rows' start/end cut a whole video (original layout only)


_CHARADES = (_Folder("star/Charades_segment", "video", False), _Folder("star/Charades_v1_480", "video", True))
_CLEVRER = (_Folder("clevrer/video_validation", "video", False),)
_PERCEPTION = (_Folder("perception/videos", "video", False),)

# Task (json file stem) -> candidate video folders, current release first.
TASKS: dict[str, tuple[_Folder, ...]] = {
    "action_sequence": _CHARADES,
    "action_prediction": _CHARADES,
    "action_antonym": (_Folder("ssv2_video_mp4", "video", False), _Folder("ssv2_video", "video", False)),
    "fine_grained_action": (_Folder("Moments_in_Time_Raw/videos", "video", False),),
    "unexpected_action": (_Folder("FunQA_test/test", "video", False),),
    "object_existence": _CLEVRER,
    "object_interaction": _CHARADES,
    "object_shuffle": _PERCEPTION,
    "moving_direction": _CLEVRER,
    "action_localization": (_Folder("sta/sta_video_segment", "video", False), _Folder("sta/sta_video", "video", True)),
    "scene_transition": (_Folder("scene_qa/video", "video", False),),
    "action_count": _PERCEPTION,
    "moving_count": _CLEVRER,
    "moving_attribute": _CLEVRER,
    "state_change": _PERCEPTION,
    "fine_grained_pose": (_Folder("nturgbd_convert", "video", False), _Folder("nturgbd", "video", False)),
    "character_order": _PERCEPTION,
    "egocentric_navigation": (_Folder("vlnqa", "video", False),),
    "episodic_reasoning": (_Folder("tvqa/video_fps3_hq_segment", "frames", False),
                           _Folder("tvqa/frames_fps3_hq", "frames", True)),
    "counterfactual_inference": _CLEVRER,
}


def iter_samples(input: Optional[str], opts: SourceOptions) -> Iterator[RawSample]:
    wanted = _hub.selectors(opts.split)
    unknown = [t for t in wanted if t not in TASKS]
    if unknown:
        raise DataError(f"mvbench: unknown task(s) {', '.join(unknown)} (tasks: {', '.join(sorted(TASKS))})")
    root = _hub.resolve_root(input, opts, default_repo=HUB_REPO, allow_patterns=["json/*", "video/*"],
                             archives=(".zip",))
    json_dir = root / "json"
    if not json_dir.is_dir():
        raise DataError(f"mvbench: no json/ folder of task files under {root}")
    files = {p.stem: p for p in _hub.glob_files(json_dir, ["*.json"])}
    tasks = wanted or sorted(t for t in files if t in TASKS)
    missing = [f"json/{t}.json" for t in tasks if t not in files]
    if missing:
        raise DataError(f"mvbench: missing task file(s) {', '.join(missing)} under {root}")
    if not tasks:
        raise DataError(f"mvbench: no known task files (json/<task>.json) under {root}")
    return _hub.take(_samples(root, [(t, files[t]) for t in tasks]), opts.limit)


def _bases(root: Path) -> list[Path]:
    # Local copies keep video/<folder>; lmms-eval-style extraction puts <folder> at the root; some mirrors
    # of the first release nest star/ and clevrer/ under data0613/.
    return [root / "video", root, root / "video" / "data0613", root / "data0613"]


def _locate(root: Path, task: str, video: str) -> tuple[Path, _Folder]:
    folders = TASKS[task]
    for folder in folders:
        for base in _bases(root):
            path = base / folder.path / video
            if path.exists():
                return path, folder
    # Not present (yet): point at the current release's place so the failure names the expected path.
    base = root / "video" if (root / "video").is_dir() else root
    return base / folders[0].path / video, folders[0]


def _media_kind(path: Path, folder: _Folder) -> str:
    if path.is_dir():
        return "frames"
    if path.exists() or path.suffix:
        return "video"
    return folder.kind  # absent and extension-less: trust the table (TVQA clips are frame folders)


def _samples(root: Path, tasks: list[tuple[str, Path]]) -> Iterator[RawSample]:
    return _hub.json_task_rows(tasks, NAME, KIND_DEFAULT, lambda task, id, row: _sample(root, task, id, row))


def _sample(root: Path, task: str, id: str, row: dict) -> RawSample:
    candidates, answer = _hub.candidates_and_answer(row)
    video = str(_hub.need(row, "video"))
    path, folder = _locate(root, task, video)
    extra = {"task": task}
    if folder.bounded and row.get("start") is not None and row.get("end") is not None:
        extra["bound"] = [float(row["start"]), float(row["end"])]
    return _hub.mcq_sample(
        id=id,
        source=NAME,
        question=str(_hub.need(row, "question")),
        options=candidates,
        answer_index=candidates.index(answer),
        category=task,
        cluster=f"{folder.path}/{video}",
        media=str(path),
        media_kind=_media_kind(path, folder),
        extra=extra,
    )
