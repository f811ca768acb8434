"""`mlvu`: MLVU (Hub repo MLVU/MVLU), long-video MCQs, the dev set's seven multiple-choice tasks.

Published layout: `MLVU/json/<n>_<task>.json` (`1_plotQA`, `2_needle`, `3_ego`, `4_count`, `5_order`,
`6_anomaly_reco`, `7_topic_reasoning`), each a list of
  {video, duration, question, candidates, answer (the text of one candidate), question_type}
and the videos in `MLVU/video/<n>_<task>/<video>`. The input may be the repo root or its `MLVU/` folder.
The generation tasks (`8_sub_scene`, `9_summary`) have no candidates and are not read. `opts.split` names
task files ("1_plotQA,4_count"); category = question_type (the task), cluster = the video.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

from fvlm_cli.data.sources import _hub
from fvlm_cli.data.sources.base import RawSample, SourceOptions
from fvlm_cli.errors import DataError

NAME = "mlvu"
KIND_DEFAULT = "mcq"
HUB_REPO = "MLVU/MVLU"

GENERATION_TASKS = ("8_sub_scene", "9_summary")


def iter_samples(input: Optional[str], opts: SourceOptions) -> Iterator[RawSample]:
    wanted = _hub.selectors(opts.split)
    videos = [f"MLVU/video/{t}/*" for t in wanted] if wanted else ["MLVU/video/*"]
    root = _hub.resolve_root(input, opts, default_repo=HUB_REPO, allow_patterns=["MLVU/json/*", *videos])
    if (root / "MLVU" / "json").is_dir():
        root = root / "MLVU"
    if not (root / "json").is_dir():
        raise DataError(f"mlvu: no json/ (or MLVU/json/) folder of task files under {root}")
    files = {p.stem: p for p in _hub.glob_files(root / "json", ["*.json"]) if p.stem not in GENERATION_TASKS}
    missing = [t for t in wanted if t not in files]
    if missing:
        raise DataError(f"mlvu: unknown task(s) {', '.join(missing)} (tasks: {', '.join(sorted(files))})")
    tasks = wanted or sorted(files)
    if not tasks:
        raise DataError(f"mlvu: no multiple-choice task files in {root / 'json'}")
    return _hub.take(_samples(root, [(t, files[t]) for t in tasks]), opts.limit)


def _samples(root: Path, tasks: list[tuple[str, Path]]) -> Iterator[RawSample]:
    return _hub.json_task_rows(tasks, NAME, KIND_DEFAULT, lambda task, id, row: _sample(root, task, id, row))


def _sample(root: Path, task: str, id: str, row: dict) -> RawSample:
    candidates, answer = _hub.candidates_and_answer(row)
    video = str(_hub.need(row, "video"))
    extra = {"task": task}
    if row.get("duration") is not None:
        extra["duration"] = row["duration"]
    return _hub.mcq_sample(
        id=id,
        source=NAME,
        question=str(_hub.need(row, "question")),
        options=candidates,
        answer_index=candidates.index(answer),
        category=str(row.get("question_type") or task),
        cluster=video,
        media=str(root / "video" / task / video),
        media_kind="video",
        extra=extra,
    )
