"""`mlvu`: MLVU (Hub repo MLVU/MVLU), long-video MCQs, the dev set's seven multiple-choice tasks.

Published layout: `MLVU/json/<n>_<task>.json` (`1_plotQA`, `2_needle`, `3_ego`, `4_count`, `5_order`,
`6_anomaly_reco`, `7_topic_reasoning`), each a list of
  {video, duration, question, candidates, answer (the text of one candidate), question_type}
and the videos in `MLVU/video/<n>_<task>/<video>`. The input may be the repo root or its `MLVU/` folder.
The generation tasks (`8_sub_scene`, `9_summary`) have no candidates and are not read. `opts.split` names
tasks by file stem or by bare name ("1_plotQA,anomaly_reco"). category = the task's name without its number
(plotQA, needle, ego, count, order, anomaly_reco, topic_reasoning), as MLVU's own evaluation and lmms-eval name
them: the json rows' question_type says `findNeedle` where the parquet's task_type says `needle`, so both
inputs report the same categories. cluster = the video.
MLVU_Test (`test_multi_choice_tasks.json`, six options) is not read: its answers are not published (the MLVU
server scores it), so there is nothing to score locally.

lmms-eval's copy (`--input sy1998/MLVU_dev`, or a local copy of it) is read too: `mlvu/test-*.parquet` with
  video_name, duration, question (the options follow on later lines; kept whole as meta.doc_question, which
  `--protocol lmms-eval` puts in its prompt as lmms-eval does), candidates, answer (a letter, or the text of a
  candidate), task_type, question_id
and the videos in root-level zips (`video_part_N.zip`, `action_count.zip`, ...) read in place, a member
found by the `video_name` path or, failing that, by its file name; unzipped files under the root work too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Optional

from fvlm_cli.data.sources import _hub
from fvlm_cli.data.sources.base import RawSample, SourceOptions
from fvlm_cli.errors import DataError

NAME = "mlvu"
KIND_DEFAULT = "mcq"
HUB_REPO = "MLVU/MVLU"

GENERATION_TASKS = ("8_sub_scene", "9_summary")
MCQ_TASKS = ("1_plotQA", "2_needle", "3_ego", "4_count", "5_order", "6_anomaly_reco", "7_topic_reasoning")


def task_name(task: str) -> str:
    """`6_anomaly_reco` -> `anomaly_reco` (a bare name stays as it is)."""
    return re.sub(r"^\d+_", "", task)


TASK_NAMES = tuple(task_name(t) for t in MCQ_TASKS)
DEV_PARQUET_REPO = "sy1998/MLVU_dev"  # lmms-eval's mlvu_dev
_DEV_COLUMNS = ["video_name", "duration", "question", "candidates", "answer", "task_type", "question_id"]


def allow_patterns(tasks: list[str]) -> list[str]:
    """The task files and the named tasks' video folders (the seven multiple-choice ones by default: the
    generation tasks' videos are never read, so never fetched)."""
    return ["MLVU/json/*", *(f"MLVU/video/{t}/*" for t in (tasks or MCQ_TASKS))]


def iter_samples(input: Optional[str], opts: SourceOptions) -> Iterator[RawSample]:
    selected = _hub.selectors(opts.split)
    unknown = [w for w in selected if task_name(w) not in TASK_NAMES]
    if unknown:
        raise DataError(f"mlvu: unknown task(s) {', '.join(unknown)} (multiple-choice tasks: "
                        f"{', '.join(MCQ_TASKS)}; the number may be left out)")
    wanted = [t for t in MCQ_TASKS if task_name(t) in {task_name(w) for w in selected}]
    patterns = ["mlvu/*.parquet", "*.zip"] if input == DEV_PARQUET_REPO else allow_patterns(wanted)
    root = _hub.resolve_root(input, opts, default_repo=HUB_REPO, allow_patterns=patterns)
    parquet = [root] if root.suffix == ".parquet" else (
        [] if (root / "MLVU" / "json").is_dir() or (root / "json").is_dir()
        else _hub.glob_files(root, ["mlvu/*.parquet", "*.parquet"]))
    if parquet:
        base = root.parent.parent if root.is_file() else root
        return _hub.take(_dev_samples(base, parquet, {task_name(w) for w in wanted}), opts.limit)
    if (root / "MLVU" / "json").is_dir():
        root = root / "MLVU"
    if not (root / "json").is_dir():
        if _hub.glob_files(root, ["test_multi_choice_tasks.json", "*/test_multi_choice_tasks.json"]):
            raise DataError(f"mlvu: {root} is MLVU_Test, whose answers are not published (the MLVU server scores "
                            f"it); fvlm reads the dev set (MLVU/MVLU or sy1998/MLVU_dev)")
        raise DataError(f"mlvu: no json/ (or MLVU/json/) folder of task files under {root}")
    files = {p.stem: p for p in _hub.glob_files(root / "json", ["*.json"]) if p.stem not in GENERATION_TASKS}
    missing = [t for t in wanted if t not in files]
    if missing:
        raise DataError(f"mlvu: no task file(s) {', '.join(f'json/{t}.json' for t in missing)} under {root}")
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
        category=task_name(task),
        cluster=video,
        media=str(root / "video" / task / video),
        media_kind="video",
        extra=extra,
    )


def _dev_samples(root: Path, files: list[Path], tasks: set[str]) -> Iterator[RawSample]:
    """lmms-eval's MLVU_dev parquet rows; `tasks` (bare names) filters task_type."""
    from fvlm_cli.data import archives

    members: dict[str, object] = {}
    for name, member in archives.index_zips(_hub.zip_archives(root, ["*.zip"])).items():
        if not member.is_dir:
            members.setdefault(name, member)
            members.setdefault(Path(name).name, member)
    n = 0
    for path in files:
        for row in _hub.iter_parquet(path, _DEV_COLUMNS, required=["video_name", "question", "candidates", "answer"]):
            task = str(row.get("task_type") or "unknown")
            if tasks and task not in tasks:
                continue
            id = str(row.get("question_id") or f"row-{n:05d}")
            n += 1
            try:
                yield _dev_sample(root, members, id, task, row)
            except _hub.BAD_ROW as e:
                yield _hub.error_sample(id, NAME, KIND_DEFAULT, _hub.row_error(e), getattr(e, "label", None))


def _dev_sample(root: Path, members: dict, id: str, task: str, row: dict) -> RawSample:
    candidates = [str(c) for c in _hub.need(row, "candidates")]
    answer = str(_hub.need(row, "answer")).strip()
    letter = answer.strip("()").upper()
    if len(letter) == 1 and letter in _hub.LETTERS[: len(candidates)]:
        index = _hub.LETTERS.index(letter)
    elif answer in candidates:
        index = candidates.index(answer)
    else:
        raise ValueError(f"answer {answer!r} is neither an option letter nor one of the candidates")
    video = str(_hub.need(row, "video_name"))
    media = members.get(video) or members.get(Path(video).name)
    if media is None:
        if not (root / video).is_file():
            raise _hub.MissingMedia(f"video {video} is in no *.zip and not under the root", video)
        media = str(root / video)
    doc_question = str(_hub.need(row, "question"))
    # the first line is the question (a "Question: " label dropped), the options follow: ours are re-lettered;
    # lmms-eval's prompt reads the whole field, so it is kept as it is in meta.doc_question
    question = doc_question.strip().split("\n")[0].strip().removeprefix("Question:").strip()
    extra = {"task": task, "doc_question": doc_question}
    if row.get("duration") is not None:
        extra["duration"] = row["duration"]
    return _hub.mcq_sample(id=id, source=NAME, question=question, options=candidates, answer_index=index,
                           category=task, cluster=video, media=media, media_kind="video", extra=extra)
