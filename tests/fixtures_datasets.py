"""Tiny copies of the published datasets, in each one's own layout, for the source tests.

Every builder writes into a fresh folder and returns its root. Parquet is written with pyarrow using the
schema the HF `datasets` library writes (an `Image` column is a struct {bytes, path}); images are real PNGs
made by PIL and videos real 2-second 64x64 MPEG-4 clips written with PyAV, so the driver could decode them.
Each dataset carries at least one malformed row, to check it comes back as a RawSample with `error`.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def write_video(path: Path, seconds: float = 2.0, size: int = 64, fps: int = 8) -> Path:
    """A real MPEG-4 clip: a bar sweeping left to right so frames differ."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        n = int(seconds * fps)
        for i in range(n):
            img = np.zeros((size, size, 3), np.uint8)
            x = int(i * (size - 8) / max(1, n - 1))
            img[:, x:x + 8] = (255, 255, 255)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


class _Videos:
    """Writes one clip per builder and copies it: encoding is the slow part."""

    def __init__(self, root: Path):
        self.template = write_video(root / ".template.mp4")

    def put(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.template, path)
        return path


def write_parquet(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def img(color=(200, 30, 30), name: str = "x.png") -> dict:
    return {"bytes": png_bytes(color), "path": name}


# --------------------------------------------------------------------------- the_cauldron

CAULDRON_SCHEMA = pa.schema([
    ("images", pa.list_(HF_IMAGE)),
    ("texts", pa.list_(pa.struct([("user", pa.string()), ("assistant", pa.string()), ("source", pa.string())]))),
])


def build_cauldron(root: Path) -> Path:
    """ai2d: 4 rows (1 turn, 3 turns, 2 images, no texts); vqav2 in two shards: 3 rows (one without image)."""
    t = lambda u, a: {"user": u, "assistant": a, "source": "fixture"}  # noqa: E731
    write_parquet(root / "ai2d" / "train-00000-of-00001.parquet", [
        {"images": [img()], "texts": [t("What is shown?", "A red square.")]},
        {"images": [img((0, 200, 0))], "texts": [t("Colour?", "Green."), t("Shape?", "Square."),
                                                  t("Size?", "Small.")]},
        {"images": [img(), img((0, 0, 200))], "texts": [t("Which differs?", "The second.")]},
        {"images": [img()], "texts": []},
    ], CAULDRON_SCHEMA)
    write_parquet(root / "vqav2" / "train-00000-of-00002.parquet", [
        {"images": [img((9, 9, 9))], "texts": [t("Is it dark?", "Yes.")]},
        {"images": [], "texts": [t("Say hi.", "Hi.")]},
    ], CAULDRON_SCHEMA)
    write_parquet(root / "vqav2" / "train-00001-of-00002.parquet", [
        {"images": [img((250, 250, 250))], "texts": [t("Is it bright?", "Yes.")]},
    ], CAULDRON_SCHEMA)
    return root


# --------------------------------------------------------------------------- LLaVA-Video-178K

LLAVA_SUBSET = "0_30_s_academic_v0_1"


def _conv(*turns: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(turns)]


def build_llava_video(root: Path, archive: bool = False) -> Path:
    """Subset 0_30_s_academic_v0_1: caption file (2 rows) + open-ended QA file (2 rows, one malformed);
    subset 1_2_m_youtube_v0_1: 1 row. With `archive`, the videos are packed in the subset's
    `*_videos_1.tar.gz` as on the Hub instead of lying extracted."""
    videos = _Videos(root)
    sub = root / LLAVA_SUBSET
    write_json(sub / f"{LLAVA_SUBSET}_cap_processed.json", [
        {"id": "v_a", "conversations": _conv("<image>\nDescribe this video in detail.", "A person opens a door."),
         "video": "academic_source/Charades/AAA.mp4", "data_source": "0_30_s_academic_v0_1"},
        {"id": "v_b", "conversations": _conv("<video>\nWhat happens?", "Someone cooks."),
         "video": "academic_source/youcook2/BBB.mp4", "data_source": "0_30_s_academic_v0_1"},
    ])
    write_json(sub / "0_30_s_academic_oe_v0_1_qa_processed.json", [
        {"id": "v_a", "conversations": _conv("<image>\nWho is there?", "One person.", "Is the door open?",
                                             "Yes, at the end."),
         "video": "academic_source/Charades/AAA.mp4", "data_source": "0_30_s_academic_v0_1"},
        {"id": "v_bad", "video": "academic_source/Charades/AAA.mp4"},
    ])
    rels = ["academic_source/Charades/AAA.mp4", "academic_source/youcook2/BBB.mp4"]
    if archive:
        with tarfile.open(sub / f"{LLAVA_SUBSET}_videos_1.tar.gz", "w:gz") as tf:
            for rel in rels:
                tf.add(videos.template, arcname=rel)
    else:
        for rel in rels:
            videos.put(sub / rel)
    other = root / "1_2_m_youtube_v0_1"
    write_json(other / "1_2_m_youtube_v0_1_cap_processed.json", [
        {"id": "y_1", "conversations": _conv("<image>\nSummarise.", "A long walk."),
         "video": "liwei_youtube_videos/videos/youtube_video_2024/ytb_1.mp4", "data_source": "1_2_m_youtube"},
    ])
    videos.put(other / "liwei_youtube_videos/videos/youtube_video_2024/ytb_1.mp4")
    return root


# --------------------------------------------------------------------------- smoltalk

SMOLTALK_SCHEMA = pa.schema([
    ("messages", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
    ("source", pa.string()),
])


def build_smoltalk(root: Path) -> Path:
    """data/all: train 3 rows (system+user+assistant, user+assistant, bad role), test 1 row;
    data/everyday-conversations: train 2 rows."""
    m = lambda role, content: {"role": role, "content": content}  # noqa: E731
    write_parquet(root / "data" / "all" / "train-00000-of-00001.parquet", [
        {"messages": [m("system", "Be brief."), m("user", "2+2?"), m("assistant", "4")], "source": "math"},
        {"messages": [m("user", "Hi"), m("assistant", "Hello!"), m("user", "Bye"), m("assistant", "Bye!")],
         "source": "chat"},
        {"messages": [m("narrator", "Once upon a time"), m("assistant", "...")], "source": "bad"},
    ], SMOLTALK_SCHEMA)
    write_parquet(root / "data" / "all" / "test-00000-of-00001.parquet", [
        {"messages": [m("user", "Capital of France?"), m("assistant", "Paris.")], "source": "qa"},
    ], SMOLTALK_SCHEMA)
    write_parquet(root / "data" / "everyday-conversations" / "train-00000-of-00001.parquet", [
        {"messages": [m("user", "How are you?"), m("assistant", "Well, thanks.")], "source": None},
        {"messages": [m("user", "Nice day."), m("assistant", "Indeed.")], "source": None},
    ], SMOLTALK_SCHEMA)
    return root


# --------------------------------------------------------------------------- RLAIF-V

RLAIF_SCHEMA = pa.schema([
    ("ds_name", pa.string()), ("image", HF_IMAGE), ("question", pa.string()), ("chosen", pa.string()),
    ("rejected", pa.string()), ("origin_dataset", pa.string()), ("origin_split", pa.string()),
    ("idx", pa.string()), ("image_path", pa.string()),
])


def build_rlaif_v(root: Path) -> Path:
    """Two root-level shards, 2 rows each; the last row has no image."""
    def row(i, image=True):
        return {"ds_name": "RLAIF-V", "image": img() if image else None, "question": f"Describe image {i}.",
                "chosen": f"Accurate description {i}.", "rejected": f"Hallucinated description {i}.",
                "origin_dataset": "COCO", "origin_split": json.dumps({"split": "train"}), "idx": str(i),
                "image_path": f"img_{i}.jpg"}
    write_parquet(root / "RLAIF-V-Dataset_000.parquet", [row(0), row(1)], RLAIF_SCHEMA)
    write_parquet(root / "RLAIF-V-Dataset_001.parquet", [row(2), row(3, image=False)], RLAIF_SCHEMA)
    return root


# --------------------------------------------------------------------------- MVBench

def build_mvbench(root: Path) -> Path:
    """action_sequence (original layout: whole Charades video + start/end), object_interaction (current
    layout: pre-cut segment), episodic_reasoning (TVQA frame folder), scene_transition (2 rows, one whose
    answer is not a candidate)."""
    videos = _Videos(root)
    write_json(root / "json" / "action_sequence.json", [
        {"video": "ZS9XR.mp4", "question": "What did the person do first?",
         "candidates": ["Opened the door.", "Sat on the bed.", "Took the cup."], "answer": "Sat on the bed.",
         "start": 1.5, "end": 9.0},
    ])
    videos.put(root / "video" / "star" / "Charades_v1_480" / "ZS9XR.mp4")
    write_json(root / "json" / "object_interaction.json", [
        {"video": "ZS9XR_seg1.mp4", "question": "Which object did the person take?",
         "candidates": ["The cup.", "The book.", "The towel.", "The phone."], "answer": "The towel.",
         "start": 0.0, "end": 2.0},
    ])
    videos.put(root / "video" / "star" / "Charades_segment" / "ZS9XR_seg1.mp4")
    write_json(root / "json" / "episodic_reasoning.json", [
        {"video": "castle_s01e01_seg01_clip_00", "question": "Why did Castle smile?",
         "candidates": ["He won.", "He lost.", "He laughed.", "He left.", "He slept."], "answer": "He won.",
         "start": 0.0, "end": 3.0},
    ])
    frames = root / "video" / "tvqa" / "frames_fps3_hq" / "castle_s01e01_seg01_clip_00"
    frames.mkdir(parents=True)
    for i in range(3):
        (frames / f"{i + 1:05d}.jpg").write_bytes(png_bytes((i * 60, 0, 0)))
    write_json(root / "json" / "scene_transition.json", [
        {"video": "s1.mp4", "question": "How does the scene change?",
         "candidates": ["From kitchen to street.", "From street to kitchen."], "answer": "From street to kitchen."},
        {"video": "s2.mp4", "question": "How does the scene change?",
         "candidates": ["From A to B.", "From B to A."], "answer": "From C to D."},
    ])
    videos.put(root / "video" / "scene_qa" / "video" / "s1.mp4")
    return root


# --------------------------------------------------------------------------- Video-MME

VIDEO_MME_SCHEMA = pa.schema([(k, pa.string()) for k in (
    "video_id", "duration", "domain", "sub_category", "url", "videoID", "question_id", "task_type", "question")]
    + [("options", pa.list_(pa.string())), ("answer", pa.string())])


def build_video_mme(root: Path, archive: bool = False) -> Path:
    """4 questions on 2 videos (2 short on vidA, 1 medium on vidB, 1 with options out of letter order).
    With `archive`, videos sit in `videos_chunked_01.zip` (members `data/<id>.mp4`) as on the Hub."""
    videos = _Videos(root)
    base = dict(domain="Knowledge", sub_category="Humanity & History", url="https://www.youtube.com/watch?v=x")
    rows = [
        dict(base, video_id="001", duration="short", videoID="vidA", question_id="001-1",
             task_type="Counting Problem", question="How many people appear?",
             options=["A. One.", "B. Two.", "C. Three.", "D. Four."], answer="C"),
        dict(base, video_id="001", duration="short", videoID="vidA", question_id="001-2",
             task_type="Action Recognition", question="What is the man doing?",
             options=["A. Running.", "B. Cooking.", "C. Reading.", "D. Singing."], answer="A"),
        dict(base, video_id="301", duration="medium", videoID="vidB", question_id="301-1",
             task_type="Object Recognition", question="What is on the table?",
             options=["A. A cup.", "B. A lamp.", "C. A cat.", "D. A plant."], answer="D"),
        dict(base, video_id="301", duration="medium", videoID="vidB", question_id="301-2",
             task_type="OCR Problems", question="What does the sign say?",
             options=["B. Stop.", "A. Go.", "C. Wait.", "D. Exit."], answer="A"),
    ]
    write_parquet(root / "videomme" / "test-00000-of-00001.parquet", rows, VIDEO_MME_SCHEMA)
    if archive:
        with zipfile.ZipFile(root / "videos_chunked_01.zip", "w") as zf:
            for vid in ("vidA", "vidB"):
                zf.write(videos.template, f"data/{vid}.mp4")
    else:
        for vid in ("vidA", "vidB"):
            videos.put(root / "data" / f"{vid}.mp4")
    return root


# --------------------------------------------------------------------------- POPE

POPE_SCHEMA = pa.schema([("id", pa.string()), ("question_id", pa.string()), ("question", pa.string()),
                         ("answer", pa.string()), ("image_source", pa.string()), ("image", HF_IMAGE),
                         ("category", pa.string())])


def build_pope(root: Path) -> Path:
    """Default config data/test: 5 rows (one with answer 'maybe'); Full/adversarial holds its 2 rows again."""
    def row(i, qid, cat, answer, src, obj):
        return {"id": str(i), "question_id": qid, "question": f"Is there a {obj} in the image?",
                "answer": answer, "image_source": src, "image": img(), "category": cat}
    rows = [
        row(0, "1", "adversarial", "yes", "COCO_val2014_000000310196", "dog"),
        row(1, "2", "adversarial", "no", "COCO_val2014_000000310196", "cat"),
        row(2, "1", "popular", "yes", "COCO_val2014_000000210789", "car"),
        row(3, "1", "random", "no", "COCO_val2014_000000429109", "zebra"),
        row(4, "2", "random", "maybe", "COCO_val2014_000000429109", "kite"),
    ]
    write_parquet(root / "data" / "test-00000-of-00001.parquet", rows, POPE_SCHEMA)
    write_parquet(root / "Full" / "adversarial-00000-of-00001.parquet", rows[:2], POPE_SCHEMA)
    return root


# --------------------------------------------------------------------------- ScienceQA

SCIENCEQA_SCHEMA = pa.schema([
    ("image", HF_IMAGE), ("question", pa.string()), ("choices", pa.list_(pa.string())), ("answer", pa.int8()),
    ("hint", pa.string()), ("task", pa.string()), ("grade", pa.string()), ("subject", pa.string()),
    ("topic", pa.string()), ("category", pa.string()), ("skill", pa.string()), ("lecture", pa.string()),
    ("solution", pa.string()),
])


def _sqa(image, question, choices, answer, hint, subject):
    return {"image": image, "question": question, "choices": choices, "answer": answer, "hint": hint,
            "task": "closed choice", "grade": "grade4", "subject": subject, "topic": "t", "category": "c",
            "skill": "s", "lecture": "", "solution": ""}


def build_scienceqa(root: Path, layout: str = "derek-thomas") -> Path:
    """test: 3 rows (image + hint, text-only without hint, answer missing); validation: 1 row.
    layout "lmms-lab" writes ScienceQA-IMG/{test,validation}-* instead of data/."""
    folder = root / ("data" if layout == "derek-thomas" else "ScienceQA-IMG")
    write_parquet(folder / "test-00000-of-00001-abc.parquet", [
        _sqa(img(), "Which animal is a mammal?", ["frog", "whale", "trout"], 1,
             "The picture shows three animals.", "natural science"),
        _sqa(None, "Which word is a noun?", ["run", "table"], 1, "", "language science"),
        _sqa(None, "Which is heavier?", ["a", "b"], None, "", "natural science"),
    ], SCIENCEQA_SCHEMA)
    write_parquet(folder / "validation-00000-of-00001-def.parquet", [
        _sqa(None, "Which is a state?", ["Ohio", "Paris"], 0, "", "social science"),
    ], SCIENCEQA_SCHEMA)
    return root


# --------------------------------------------------------------------------- MLVU

def build_mlvu(root: Path) -> Path:
    """MLVU/json: 1_plotQA (2 rows), 4_count (1 row + 1 without candidates), 9_summary (generation, ignored)."""
    videos = _Videos(root)
    mlvu = root / "MLVU"
    write_json(mlvu / "json" / "1_plotQA.json", [
        {"video": "movie101_66.mp4", "duration": 246.0, "question": "What colour is the main character's hat?",
         "candidates": ["Red", "Blue", "Green", "Black"], "answer": "Green", "question_type": "plotQA"},
        {"video": "movie101_66.mp4", "duration": 246.0, "question": "Where does the story start?",
         "candidates": ["A forest", "A city", "A ship", "A school"], "answer": "A ship", "question_type": "plotQA"},
    ])
    write_json(mlvu / "json" / "4_count.json", [
        {"video": "count_1.mp4", "duration": 600.5, "question": "How many times does the dog jump?",
         "candidates": ["1", "2", "3", "4"], "answer": "4", "question_type": "count"},
        {"video": "count_2.mp4", "duration": 300.0, "question": "How many cars?", "answer": "2",
         "question_type": "count"},
    ])
    write_json(mlvu / "json" / "9_summary.json", [
        {"video": "sum_1.mp4", "duration": 900.0, "question": "Summarise.", "answer": "A summary.",
         "question_type": "summary"},
    ])
    videos.put(mlvu / "video" / "1_plotQA" / "movie101_66.mp4")
    videos.put(mlvu / "video" / "4_count" / "count_1.mp4")
    return root


BUILDERS = {
    "cauldron": build_cauldron,
    "llava-video": build_llava_video,
    "smoltalk": build_smoltalk,
    "rlaif-v": build_rlaif_v,
    "mvbench": build_mvbench,
    "video-mme": build_video_mme,
    "pope": build_pope,
    "scienceqa": build_scienceqa,
    "mlvu": build_mlvu,
}
