"""Tiny copies of the published datasets, in each one's own layout, for the source tests.

Every builder writes into a fresh folder and returns its root. Parquet is written with pyarrow using the
schema the HF `datasets` library writes (an `Image` column is a struct {bytes, path}); images are real PNGs
made by PIL and videos real 2-second 64x64 MPEG-4 clips written with PyAV, so the driver could decode them.
Videos ship in archives exactly as on the Hub (Video-MME `videos_chunked_NN.zip`, MVBench `video/<src>.zip`,
OpenVid `OpenVid_partN.zip` and split `_partaa`/`_partab`, LLaVA-Video `<subset>_videos_N.tar.gz`), and every
folder carries the `.cache/huggingface/` that `hf download --local-dir` leaves. Each dataset carries at least
one malformed row, to check it comes back as a RawSample with `error`, and the video datasets one row whose
video is in no archive.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tarfile
import tempfile
import zipfile
from functools import lru_cache
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


@lru_cache(maxsize=1)
def _template() -> Path:
    """One 2 s clip per test process, outside every dataset folder (encoding is the slow part)."""
    return write_video(Path(tempfile.mkdtemp(prefix="fvlm-fixture-")) / "template.mp4")


class _Videos:
    """Copies the template clip where a layout wants a video."""

    def __init__(self, root: Path):
        self.template = _template()

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


def hf_local_dir(root: Path) -> Path:
    """What `hf download --local-dir` leaves beside the files: `.cache/huggingface/` metadata (never data)."""
    meta = root / ".cache" / "huggingface"
    (meta / "download").mkdir(parents=True, exist_ok=True)
    (meta / ".gitignore").write_text("*\n")
    (meta / "download" / "README.md.metadata").write_text("0123456789abcdef\netag\n1700000000.0\n")
    return root


def zip_of(path: Path, members: dict[str, Any]) -> Path:
    """A zip written with the stored method (as video zips are): members {name: bytes or source Path}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            if isinstance(data, Path):
                zf.write(data, name)
            else:
                zf.writestr(name, data)
    return path


# --------------------------------------------------------------------------- the_cauldron

CAULDRON_SCHEMA = pa.schema([
    ("images", pa.list_(HF_IMAGE)),
    ("texts", pa.list_(pa.struct([("user", pa.string()), ("assistant", pa.string()), ("source", pa.string())]))),
])


def build_cauldron(root: Path) -> Path:
    """ai2d: 4 rows (1 turn, 3 turns, 2 images, no texts); vqav2 in two shards: 3 rows (one without image);
    nlvr2: 2 rows of 2 images each (one with 2 turns)."""
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
    write_parquet(root / "nlvr2" / "train-00000-of-00001.parquet", [
        {"images": [img((255, 0, 0)), img((0, 0, 255))],
         "texts": [t("The left image is red and the right one blue. True or false?", "True.")]},
        {"images": [img((0, 255, 0)), img((0, 255, 0))],
         "texts": [t("Do both images show the same colour?", "Yes."), t("Which colour?", "Green.")]},
    ], CAULDRON_SCHEMA)
    return hf_local_dir(root)


# --------------------------------------------------------------------------- LLaVA-Video-178K

LLAVA_SUBSET = "0_30_s_academic_v0_1"


def _conv(*turns: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(turns)]


def build_llava_video(root: Path, archive: bool = True) -> Path:
    """Subset 0_30_s_academic_v0_1: caption file (2 rows) + open-ended QA file (2 rows, one malformed);
    subset 1_2_m_youtube_v0_1: 2 rows, the second naming a video in no archive. The videos are packed in each
    subset's `<subset>_videos_1.tar.gz` as on the Hub (members = the paths the rows name); `archive=False`
    leaves them unpacked in the subset folder instead. The repo's other top-level folders are there too:
    gpt4o_caption_prompt/meta.json and gpt4o_qa_prompt/ (generation prompts: a json object, a .py), and
    llava_hound/ with only its annotation file (its videos are in another repo)."""
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
        {"id": "y_2", "conversations": _conv("<image>\nSummarise.", "Gone."),
         "video": "liwei_youtube_videos/videos/youtube_video_2024/ytb_gone.mp4", "data_source": "1_2_m_youtube"},
    ])
    rel = "liwei_youtube_videos/videos/youtube_video_2024/ytb_1.mp4"
    if archive:
        with tarfile.open(other / "1_2_m_youtube_v0_1_videos_1.tar.gz", "w:gz") as tf:
            tf.add(videos.template, arcname=rel)
    else:
        videos.put(other / rel)
    write_json(root / "gpt4o_caption_prompt" / "meta.json", ["83FR0RjX7qA.mp4"])
    write_json(root / "gpt4o_qa_prompt" / "demonstration_pool.json", {"temporal": ["Q: What happens first?"]})
    (root / "gpt4o_qa_prompt" / "generate_qa.py").write_text("# the prompt script\n")
    write_json(root / "llava_hound" / "sharegptvideo_qa_255k_processed.json", [
        {"id": "hound_0", "video": "v_000123", "conversations": _conv("<video>\nWhat is shown?", "A dog runs.")},
    ])
    return hf_local_dir(root)


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
    return hf_local_dir(root)


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
    return hf_local_dir(root)


# --------------------------------------------------------------------------- MVBench

MVBENCH_CLIP = "castle_s01e01_seg01_clip_00"


def build_mvbench(root: Path) -> Path:
    """json/ + video/<src>.zip as on the Hub: action_sequence (original layout: whole Charades video in
    star.zip + a start/end window), object_interaction (pre-cut segment, window ignored), episodic_reasoning
    (a 12-frame TVQA frame folder in tvqa.zip = 4 s at 3 fps, window [1, 3]), egocentric_navigation
    (vlnqa.zip), scene_transition (3 rows: one fine, one answer not a candidate, one video in no zip),
    fine_grained_pose (one row: as on main since Oct 2024, no nturgbd.zip, only video/MVBench_videos_ntu.txt)."""
    videos = _Videos(root)
    clip = videos.template
    write_json(root / "json" / "action_sequence.json", [
        {"video": "ZS9XR.mp4", "question": "What did the person do first?",
         "candidates": ["Opened the door.", "Sat on the bed.", "Took the cup."], "answer": "Sat on the bed.",
         "start": 0.25, "end": 1.75},
    ])
    write_json(root / "json" / "object_interaction.json", [
        {"video": "ZS9XR_seg1.mp4", "question": "Which object did the person take?",
         "candidates": ["The cup.", "The book.", "The towel.", "The phone."], "answer": "The towel.",
         "start": 0.0, "end": 1.0},
    ])
    zip_of(root / "video" / "star.zip", {"star/Charades_v1_480/ZS9XR.mp4": clip,
                                         "star/Charades_segment/ZS9XR_seg1.mp4": clip})
    write_json(root / "json" / "episodic_reasoning.json", [
        {"video": MVBENCH_CLIP, "question": "Why did Castle smile?",
         "candidates": ["He won.", "He lost.", "He laughed.", "He left.", "He slept."], "answer": "He won.",
         "start": 1.0, "end": 3.0},
    ])
    zip_of(root / "video" / "tvqa.zip", {f"tvqa/frames_fps3_hq/{MVBENCH_CLIP}/{i + 1:05d}.jpg": png_bytes((i * 20, 0, 0))
                                         for i in range(12)})
    write_json(root / "json" / "egocentric_navigation.json", [
        {"video": "nav_0001.mp4", "question": "Where should you go next?",
         "candidates": ["Turn left.", "Go straight.", "Turn right.", "Stop."], "answer": "Go straight."},
    ])
    zip_of(root / "video" / "vlnqa.zip", {"vlnqa/nav_0001.mp4": clip})
    write_json(root / "json" / "scene_transition.json", [
        {"video": "s1.mp4", "question": "How does the scene change?",
         "candidates": ["From kitchen to street.", "From street to kitchen."], "answer": "From street to kitchen."},
        {"video": "s2.mp4", "question": "How does the scene change?",
         "candidates": ["From A to B.", "From B to A."], "answer": "From C to D."},
        {"video": "s3.mp4", "question": "How does the scene change?",
         "candidates": ["From A to B.", "From B to A."], "answer": "From B to A."},
    ])
    zip_of(root / "video" / "scene_qa.zip", {"scene_qa/video/s1.mp4": clip})
    write_json(root / "json" / "fine_grained_pose.json", [
        {"video": "S001C001P001R001A043_rgb.avi", "question": "What is the action performed by the person?",
         "candidates": ["falling", "sitting down", "jumping up", "staggering"], "answer": "falling"},
    ])
    (root / "video" / "MVBench_videos_ntu.txt").write_text("S001C001P001R001A043_rgb.avi\n")
    return hf_local_dir(root)


def build_mvbench_variant(root: Path, layout: str) -> Path:
    """Two other ways the same MVBench questions are published.

    "flat-zips": each `video/<src>.zip` packed from inside its folder, so `star.zip` holds
    `Charades_v1_480/ZS9XR.mp4` (no `star/` prefix), as some mirrors ship them.
    "video-branch": the Hub's `video` revision (the one lmms-eval downloads): json/ plus the video folders
    unzipped at the repo root, segments pre-cut (`star/Charades_segment/`, `tvqa/video_fps3_hq_segment/` as
    mp4 clips), so every row's start/end is ignored."""
    build_mvbench(root)
    clip = _template()
    if layout == "flat-zips":
        for z in sorted((root / "video").glob("*.zip")):
            with zipfile.ZipFile(z) as zf:
                members = {n.split("/", 1)[1]: zf.read(n) for n in zf.namelist()}
            zip_of(z, members)
        return root
    if layout != "video-branch":
        raise ValueError(layout)
    shutil.rmtree(root / "video")
    seq = json.loads((root / "json" / "action_sequence.json").read_text())
    seq[0]["video"] = "ZS9XR_seg0.mp4"
    write_json(root / "json" / "action_sequence.json", seq)
    ep = json.loads((root / "json" / "episodic_reasoning.json").read_text())
    ep[0]["video"] = f"{MVBENCH_CLIP}.mp4"
    write_json(root / "json" / "episodic_reasoning.json", ep)
    for rel in ("star/Charades_segment/ZS9XR_seg0.mp4", "star/Charades_segment/ZS9XR_seg1.mp4",
                f"tvqa/video_fps3_hq_segment/{MVBENCH_CLIP}.mp4", "vlnqa/nav_0001.mp4", "scene_qa/video/s1.mp4"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(clip, root / rel)
    return root


# --------------------------------------------------------------------------- Video-MME

VIDEO_MME_SCHEMA = pa.schema([(k, pa.string()) for k in (
    "video_id", "duration", "domain", "sub_category", "url", "videoID", "question_id", "task_type", "question")]
    + [("options", pa.list_(pa.string())), ("answer", pa.string())])


def build_video_mme(root: Path) -> Path:
    """5 questions on 3 videos (2 short on vidA, 2 medium on vidB, 1 long on vidC), one with options out of
    letter order. Videos in `videos_chunked_01.zip` (data/vidA.mp4) and `videos_chunked_02.zip` (data/vidB.mkv),
    as on the Hub, plus `subtitle.zip`; vidC is in no archive."""
    clip = _Videos(root).template
    base = dict(domain="Knowledge", sub_category="Humanity & History", url="https://www.youtube.com/watch?v=x")
    rows = [
        dict(base, video_id="001", duration="short", videoID="vidA", question_id="001-1",
             task_type="Counting Problem", question="How many people appear?",
             options=["A. One.", "B. Two.", "C. Three.", "D. Four."], answer="C"),
        dict(base, video_id="001", duration="short", videoID="vidA", question_id="001-2",
             task_type="Action Recognition", question="What is the man doing?",
             options=["A. Running.", "B. Cooking.", "C. Reading.", "D. Singing."], answer="A"),
        dict(base, video_id="301", duration="medium", videoID="vidB", question_id="301-1", domain="Sports",
             sub_category="Football", task_type="Object Recognition", question="What is on the table?",
             options=["A. A cup.", "B. A lamp.", "C. A cat.", "D. A plant."], answer="D"),
        dict(base, video_id="301", duration="medium", videoID="vidB", question_id="301-2",
             task_type="OCR Problems", question="What does the sign say?",
             options=["B. Stop.", "A. Go.", "C. Wait.", "D. Exit."], answer="A"),
        dict(base, video_id="601", duration="long", videoID="vidC", question_id="601-1",
             task_type="Temporal Reasoning", question="What happens last?",
             options=["A. Rain.", "B. Snow.", "C. Sun.", "D. Fog."], answer="B"),
    ]
    write_parquet(root / "videomme" / "test-00000-of-00001.parquet", rows, VIDEO_MME_SCHEMA)
    zip_of(root / "videos_chunked_01.zip", {"data/vidA.mp4": clip})
    zip_of(root / "videos_chunked_02.zip", {"data/vidB.mkv": clip})
    zip_of(root / "subtitle.zip", {"subtitle/vidA.srt": b"1\n00:00:00,000 --> 00:00:01,000\nHello\n"})
    return hf_local_dir(root)


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
    return hf_local_dir(root)


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


def build_scienceqa(root: Path, layout: str = "lmms-lab") -> Path:
    """lmms-lab (the default Hub id): ScienceQA-IMG/test 3 rows (image + hint, image, answer missing),
    ScienceQA-IMG/validation 1 row; ScienceQA-FULL/test = the IMG test rows + 1 text-only question.
    layout "derek-thomas" writes the FULL rows as data/{test,validation}-* instead (IMG = rows with an image)."""
    img_test = [
        _sqa(img(), "Which animal is a mammal?", ["frog", "whale", "trout"], 1,
             "The picture shows three animals.", "natural science"),
        _sqa(img((0, 90, 0)), "Which is a plant?", ["fern", "cat"], 0, "", "natural science"),
        _sqa(img(), "Which is heavier?", ["a", "b"], None, "", "natural science"),
    ]
    text_only = _sqa(None, "Which word is a noun?", ["run", "table"], 1, "", "language science")
    validation = [_sqa(img(), "Which is a state?", ["Ohio", "Paris"], 0, "", "social science")]
    if layout == "derek-thomas":
        write_parquet(root / "data" / "test-00000-of-00001.parquet", img_test[:2] + [text_only] + img_test[2:],
                      SCIENCEQA_SCHEMA)
        write_parquet(root / "data" / "validation-00000-of-00001.parquet", validation, SCIENCEQA_SCHEMA)
        return hf_local_dir(root)
    write_parquet(root / "ScienceQA-IMG" / "test-00000-of-00001.parquet", img_test, SCIENCEQA_SCHEMA)
    write_parquet(root / "ScienceQA-IMG" / "validation-00000-of-00001.parquet", validation, SCIENCEQA_SCHEMA)
    write_parquet(root / "ScienceQA-FULL" / "test-00000-of-00001.parquet", img_test[:2] + [text_only] + img_test[2:],
                  SCIENCEQA_SCHEMA)
    write_parquet(root / "ScienceQA-FULL" / "validation-00000-of-00001.parquet", validation, SCIENCEQA_SCHEMA)
    return hf_local_dir(root)


# --------------------------------------------------------------------------- MLVU

def build_mlvu(root: Path) -> Path:
    """MLVU/json: 1_plotQA (2 rows), 2_needle (1 row; its question_type is `findNeedle`, as published), 4_count
    (1 row + 1 without candidates), 9_summary (generation, ignored)."""
    videos = _Videos(root)
    mlvu = root / "MLVU"
    write_json(mlvu / "json" / "1_plotQA.json", [
        {"video": "movie101_66.mp4", "duration": 246.0, "question": "What colour is the main character's hat?",
         "candidates": ["Red", "Blue", "Green", "Black"], "answer": "Green", "question_type": "plotQA"},
        {"video": "movie101_66.mp4", "duration": 246.0, "question": "Where does the story start?",
         "candidates": ["A forest", "A city", "A ship", "A school"], "answer": "A ship", "question_type": "plotQA"},
    ])
    write_json(mlvu / "json" / "2_needle.json", [
        {"video": "needle_32.mp4", "duration": 480.0, "question": "What animal appears in the inserted clip?",
         "candidates": ["A dog", "A cat", "A bird", "A fish"], "answer": "A bird", "question_type": "findNeedle"},
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
    videos.put(mlvu / "video" / "2_needle" / "needle_32.mp4")
    videos.put(mlvu / "video" / "4_count" / "count_1.mp4")
    videos.put(mlvu / "video" / "9_summary" / "sum_1.mp4")
    return hf_local_dir(root)


MLVU_DEV_SCHEMA = pa.schema([("video_name", pa.string()), ("duration", pa.float64()), ("question", pa.string()),
                             ("candidates", pa.list_(pa.string())), ("answer", pa.string()),
                             ("task_type", pa.string()), ("question_id", pa.string())])


def build_mlvu_dev(root: Path) -> Path:
    """lmms-eval's sy1998/MLVU_dev: mlvu/test-00000-of-00001.parquet (5 rows: a letter answer, a text answer,
    an answer that is neither, a video in no zip, an anomaly_reco row) and the videos in root-level zips (video_part_1.zip holds
    the plotQA clip under its video_name path, action_count.zip the count clip under its bare name)."""
    clip = _template()

    def row(qid, video, task, question, candidates, answer):
        opts = "\n".join(f"({'ABCD'[i]}) {c}" for i, c in enumerate(candidates))
        return {"video_name": video, "duration": 246.0, "question": f"{question}\n{opts}", "candidates": candidates,
                "answer": answer, "task_type": task, "question_id": qid}
    write_parquet(root / "mlvu" / "test-00000-of-00001.parquet", [
        row("q0", "1_plotQA/movie101_66.mp4", "plotQA", "What colour is the hat?", ["Red", "Blue", "Green"], "C"),
        row("q1", "4_count/count_1.mp4", "count", "How many jumps?", ["1", "2", "3", "4"], "4"),
        row("q2", "4_count/count_1.mp4", "count", "How many cars?", ["1", "2"], "E"),
        row("q3", "3_ego/ego_9.mp4", "ego", "Where did I put the keys?", ["Desk", "Bag"], "A"),
        row("q4", "6_anomaly_reco/surveil_1.mp4", "anomaly_reco", "Does this surveillance footage contain any "
            "anomalies? If yes, which kind of anomaly?", ["Normal", "Fighting", "Robbery", "Explosion"], "B"),
    ], MLVU_DEV_SCHEMA)
    zip_of(root / "video_part_1.zip", {"1_plotQA/movie101_66.mp4": clip, "6_anomaly_reco/surveil_1.mp4": clip})
    zip_of(root / "action_count.zip", {"count_1.mp4": clip})
    return hf_local_dir(root)


# --------------------------------------------------------------------------- OpenVid-1M

OPENVID_COLUMNS = ["video", "caption", "aesthetic score", "motion score", "temporal consistency score",
                   "camera motion", "frame", "fps", "seconds"]


def build_openvid(root: Path, csv_dir: str = "data/train") -> Path:
    """data/train/OpenVid-1M.csv (4 rows: a.mp4 in OpenVid_part0.zip, b.mp4 in the SPLIT part 1
    (`OpenVid_part1_partaa` + `_partab`, a zip cut in two), missing.mp4 in no archive, one empty caption).
    `csv_dir="."` puts the CSV at the repo root (where the Aug 2024 re-upload commits may have left it)."""
    clip = _Videos(root).template
    table = root / csv_dir / "OpenVid-1M.csv"
    table.parent.mkdir(parents=True, exist_ok=True)
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(OPENVID_COLUMNS)
        w.writerow(["a.mp4", "A red bar sweeps across a dark frame.", 5.1, 0.4, 0.9, "static", 16, 8, 2.0])
        w.writerow(["b.mp4", "The same bar, filmed again.", 5.0, 0.4, 0.9, "pan_right", 16, 8, 2.0])
        w.writerow(["missing.mp4", "A video nobody shipped.", 5.0, 0.4, 0.9, "static", 16, 8, 2.0])
        w.writerow(["c.mp4", "", 5.0, 0.4, 0.9, "static", 16, 8, 2.0])
    zip_of(root / "OpenVid_part0.zip", {"a.mp4": clip, "c.mp4": clip})
    whole = zip_of(root / ".part1.zip", {"b.mp4": clip})
    data = whole.read_bytes()
    whole.unlink()
    half = len(data) // 2
    (root / "OpenVid_part1_partaa").write_bytes(data[:half])
    (root / "OpenVid_part1_partab").write_bytes(data[half:])
    return hf_local_dir(root)


# --------------------------------------------------------------------------- WebVid

WEBVID_HEADER = "videoid,contentUrl,duration,page_dir,name\n"


def build_webvid(root: Path, base_url: str) -> Path:
    """TempoFunk/webvid-10M: data/train/partitions/{0000,0001}.csv (3 rows: 2 served, 1 404) and
    data/val/partitions/0000.csv (1 row); videos at `base_url/videos/<id>.mp4`."""
    part = root / "data" / "train" / "partitions"
    part.mkdir(parents=True)
    (part / "0000.csv").write_text(WEBVID_HEADER + f"101,{base_url}/videos/101.mp4,PT00H00M02S,001,Aerial view\n"
                                   f"102,{base_url}/videos/102.mp4,PT00H00M02S,001,\"Slow motion, waves\"\n")
    (part / "0001.csv").write_text(WEBVID_HEADER + f"103,{base_url}/videos/gone.mp4,PT00H00M02S,002,Gone\n")
    val = root / "data" / "val" / "partitions"
    val.mkdir(parents=True)
    (val / "0000.csv").write_text(WEBVID_HEADER + f"901,{base_url}/videos/901.mp4,PT00H00M02S,009,A validation clip\n")
    return hf_local_dir(root)


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
    "openvid": build_openvid,
}
