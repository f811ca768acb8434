"""`mvbench`: OpenGVLab/MVBench, 20 short-video MCQ tasks (4,000 questions).

Published layout: `json/<task>.json` (a list of {video, question, candidates, answer[, start, end]}, answer
being the text of one candidate) and the videos as `video/<src>.zip` archives (`star.zip`, `clevrer.zip`,
`tvqa.zip`, `vlnqa.zip`, ... members `<src>/<sub>/<file>`, e.g. `star/Charades_v1_480/ZS9XR.mp4`), read in
place from a local copy and from a Hub id alike (a zip packed from inside its folder, `star.zip` holding
`Charades_v1_480/...`, is found too); unzipped folders under `video/` or at the root work too, which is how
the Hub's `video` revision (the one lmms-eval downloads; `--set revision=video`) ships them, with pre-cut
segments.
Every task reads its videos from one folder, as the official evaluation maps them (all 20, egocentric
navigation = `vlnqa/`). The original layout keeps whole videos with a `start`/`end` window in seconds
(`star/Charades_v1_480`, `sta/sta_video`) and TVQA as 3 fps frame folders (`tvqa/frames_fps3_hq/<clip>/`);
there the window is applied: frames are sampled only inside it, by the media policy (frame folders at
their stored 3 fps), and the shard records the window used. Pre-cut segments of later releases
(`star/Charades_segment`, ...) are read whole. A row whose video is in no archive/folder is a failure row
naming `<folder>/<video>`. `opts.split` names tasks ("action_sequence,scene_transition"); none named means all.
category = task, cluster = the video path, so the standard error is clustered by video.
fine_grained_pose: since October 2024 the Hub's main holds no NTU RGB+D videos (their licence; only
`video/MVBench_videos_ntu.txt` names them), so its 200 rows are failure rows saying where to get the videos
(rose1.ntu.edu.sg) and where to put them (`video/nturgbd/`), unless a local copy has them.
TVQA frame folders (`00001.jpg`, ... as ffmpeg numbers them) are timed from 0: the k-th frame (from 0) is at
k/3 s. MVBench's own reader maps file number n to n/3 s, one frame (1/3 s) later; frames are sampled by fvlm's
media policy either way, not by that reader's 16 segments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, NamedTuple, Optional

from fvlm_cli.data import archives
from fvlm_cli.data.sources import _hub
from fvlm_cli.data.sources.base import RawSample, SourceOptions
from fvlm_cli.errors import DataError

NAME = "mvbench"
KIND_DEFAULT = "mcq"
HUB_REPO = "OpenGVLab/MVBench"


class _Folder(NamedTuple):
    path: str        # inside video/ and its zips (or at the root, where the zips were extracted flat)
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


# Why a task's videos may be missing from a complete download, said on its failure rows.
MISSING_HINTS = {
    "fine_grained_pose": " (the Hub's MVBench no longer ships the NTU RGB+D videos, for their licence: "
                         "video/MVBench_videos_ntu.txt names them; get them from rose1.ntu.edu.sg and put them in "
                         "video/nturgbd/)",
}


def iter_samples(input: Optional[str], opts: SourceOptions) -> Iterator[RawSample]:
    wanted = _hub.selectors(opts.split)
    unknown = [t for t in wanted if t not in TASKS]
    if unknown:
        raise DataError(f"mvbench: unknown task(s) {', '.join(unknown)} (tasks: {', '.join(sorted(TASKS))})")
    root = _hub.resolve_root(input, opts, default_repo=HUB_REPO, allow_patterns=allow_patterns(wanted))
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
    finder = _Finder(root)
    return _hub.take(_hub.json_task_rows([(t, files[t]) for t in tasks], NAME, KIND_DEFAULT,
                                         lambda task, id, row: _sample(finder, task, id, row)), opts.limit)


def allow_patterns(tasks: list[str]) -> list[str]:
    """The task files, the zips holding the named tasks' videos (all zips when no task is named), and their
    video folders as the `video` revision ships them unzipped at the root (absent on main: nothing more)."""
    folders = sorted({f.path for t in (tasks or TASKS) for f in TASKS[t]})
    unzipped = [f"{folder}/*" for folder in folders]
    if not tasks:
        return ["json/*", "video/*.zip", *unzipped]
    sources = sorted({folder.split("/")[0] for folder in folders})
    return ["json/*", *(f"video/{src}.zip" for src in sources), "video/data0613.zip", *unzipped]


# Local copies keep video/<folder>; lmms-eval-style extraction puts <folder> at the root; some mirrors
# of the first release nest star/ and clevrer/ under data0613/.
_PREFIXES = ("video/", "", "video/data0613/", "data0613/")


class _Finder:
    """A task's video: a member of a `video/*.zip` (read in place), else a file or folder on disk."""

    def __init__(self, root: Path):
        self.root = root
        zips = _hub.zip_archives(root, ["video/*.zip", "*.zip"])
        self.members = archives.index_zips(zips)
        # A zip packed from inside its folder (`star.zip` holding `Charades_v1_480/...` rather than
        # `star/Charades_v1_480/...`): its members are found under `<zip name>/` as well.
        for name, member in list(self.members.items()):
            stem = Path(member.parts[0]).stem
            if not name.startswith(f"{stem}/"):
                self.members.setdefault(f"{stem}/{name}", member)

    def locate(self, task: str, video: str):
        for folder in TASKS[task]:
            rel = f"{folder.path}/{video}"
            for prefix in _PREFIXES:
                path = self.root / f"{prefix}{rel}"
                if path.exists():
                    return str(path), folder, "frames" if path.is_dir() else "video"
            for prefix in ("", "data0613/"):
                member = self.members.get(f"{prefix}{rel}")
                if member is not None:
                    return member, folder, "frames" if member.is_dir else "video"
        wanted = " or ".join(f"{f.path}/{video}" for f in TASKS[task])
        raise _hub.MissingMedia(f"video {wanted} is in no video/*.zip and no folder{MISSING_HINTS.get(task, '')}",
                                f"{TASKS[task][0].path}/{video}")


def _sample(finder: _Finder, task: str, id: str, row: dict) -> RawSample:
    candidates, answer = _hub.candidates_and_answer(row)
    video = str(_hub.need(row, "video"))
    media, folder, kind = finder.locate(task, video)
    extra = {"task": task}
    if folder.bounded and row.get("start") is not None and row.get("end") is not None:
        start, end = float(row["start"]), float(row["end"])
        if not end > start:
            raise ValueError(f"window start {start} is not before end {end}")
        extra["window"] = [start, end]
    return _hub.mcq_sample(
        id=id,
        source=NAME,
        question=str(_hub.need(row, "question")),
        options=candidates,
        answer_index=candidates.index(answer),
        category=task,
        cluster=f"{folder.path}/{video}",
        media=media,
        media_kind=kind,
        extra=extra,
    )
