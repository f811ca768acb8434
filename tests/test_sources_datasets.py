"""The published-dataset sources against tiny fixtures in each dataset's own layout (tests/fixtures_datasets.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fvlm_cli.data.sources import (
    _hub, cauldron, llava_video, mlvu, mvbench, pope, rlaif_v, scienceqa, smoltalk, video_mme,
)
from fvlm_cli.data.sources.base import RawSample, SourceOptions
from fvlm_cli.settings import MediaConfig
from fvlm_cli.errors import DataError

sys.path.insert(0, str(Path(__file__).parent))  # the fixture builders live beside this file
import fixtures_datasets as fx  # noqa: E402

SOURCES = {m.NAME: m for m in (cauldron, llava_video, smoltalk, rlaif_v, mvbench, video_mme, pope, scienceqa, mlvu)}
MCQ = [name for name, m in SOURCES.items() if m.KIND_DEFAULT == "mcq"]


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    return {name: build(tmp_path_factory.mktemp(name.replace("-", "_"))) for name, build in fx.BUILDERS.items()}


def run(name: str, root, **opts) -> list[RawSample]:
    return list(SOURCES[name].iter_samples(None if root is None else str(root), SourceOptions(**opts)))


def good(samples: list[RawSample]) -> list[RawSample]:
    return [s for s in samples if s.error is None]


def by_id(samples: list[RawSample]) -> dict[str, RawSample]:
    return {s.id: s for s in samples}


def texts(s: RawSample) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in s.messages]


# --------------------------------------------------------------------------- every source

@pytest.mark.parametrize("name", sorted(SOURCES))
def test_order_is_deterministic_ids_unique_and_limit_respected(name, roots):
    first, second = run(name, roots[name]), run(name, roots[name])
    assert [(s.id, s.messages, s.extra, s.error) for s in first] == \
           [(s.id, s.messages, s.extra, s.error) for s in second]
    assert len({s.id for s in first}) == len(first)
    assert all(s.source == name and s.kind == SOURCES[name].KIND_DEFAULT for s in first)
    assert [s.id for s in run(name, roots[name], limit=2)] == [s.id for s in first[:2]]
    assert run(name, roots[name], limit=0) == []


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_a_malformed_row_is_yielded_with_its_reason(name, roots):
    bad = [s for s in run(name, roots[name]) if s.error]
    assert bad, "each fixture carries one malformed row"
    assert all(s.messages == [] and s.media is None and len(s.error.splitlines()) == 1 for s in bad)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_a_missing_input_is_a_data_error(name, tmp_path):
    with pytest.raises(DataError, match="not found"):
        run(name, tmp_path / "nowhere", split="x" if name == "llava-video" else None)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_an_empty_folder_is_a_data_error(name, tmp_path):
    with pytest.raises(DataError):
        run(name, tmp_path)


@pytest.mark.parametrize("name", MCQ)
def test_mcq_samples_follow_the_shard_contract(name, roots):
    samples = good(run(name, roots[name]))
    assert samples
    for s in samples:
        x = s.extra
        assert {"question", "options", "answer", "category", "cluster"} <= set(x)
        lettered = "\n".join(f"{'ABCDE'[i]}. {o}" for i, o in enumerate(x["options"]))
        assert texts(s) == [
            ("user", f"{x['question']}\n{lettered}\nAnswer with the option's letter from the given choices directly."),
            ("assistant", x["answer"]),
        ]
        assert x["answer"] in "ABCDEFGH"[: len(x["options"])]
        assert not any(o[:3] in ("A. ", "B. ", "C. ", "D. ") for o in x["options"])


# --------------------------------------------------------------------------- the_cauldron

def test_cauldron_keeps_every_turn_and_multi_image_rows(roots):
    samples = run("cauldron", roots["cauldron"])
    assert [s.id for s in samples] == [f"ai2d-{i:07d}" for i in range(4)] + [f"nlvr2-{i:07d}" for i in range(2)] \
        + [f"vqav2-{i:07d}" for i in range(3)]
    s = by_id(samples)
    assert texts(s["ai2d-0000001"]) == [("user", "Colour?"), ("assistant", "Green."), ("user", "Shape?"),
                                        ("assistant", "Square."), ("user", "Size?"), ("assistant", "Small.")]
    assert s["ai2d-0000000"].media == fx.png_bytes() and s["ai2d-0000000"].media_kind == "image"
    multi = s["ai2d-0000002"]  # two images: one sample, its frames the images in order
    assert multi.error is None and multi.media_kind == "images"
    assert multi.media == [fx.png_bytes(), fx.png_bytes((0, 0, 200))] and multi.extra["n_images"] == 2
    assert "texts" in s["ai2d-0000003"].error
    assert s["vqav2-0000001"].media is None and texts(s["vqav2-0000001"]) == [("user", "Say hi."),
                                                                              ("assistant", "Hi.")]
    assert s["vqav2-0000002"].media == fx.png_bytes((250, 250, 250))  # second shard read after the first


def test_cauldron_split_selects_subsets(roots):
    assert {s.extra["subset"] for s in run("cauldron", roots["cauldron"], split="vqav2")} == {"vqav2"}
    with pytest.raises(DataError, match="unknown cauldron subset nope"):
        run("cauldron", roots["cauldron"], split="nope")


# --------------------------------------------------------------------------- LLaVA-Video-178K

def test_llava_video_strips_placeholders_and_reads_videos_out_of_the_archives(roots, tmp_path):
    root = roots["llava-video"]
    samples = run("llava-video", root, cache_dir=str(tmp_path / "cache"))
    assert len(samples) == 6 and len(good(samples)) == 4
    sub = fx.LLAVA_SUBSET
    s = by_id(samples)
    cap = s[f"{sub}/{sub}_cap_processed/0"]
    assert texts(cap) == [("user", "Describe this video in detail."), ("assistant", "A person opens a door.")]
    assert texts(s[f"{sub}/{sub}_cap_processed/1"])[0] == ("user", "What happens?")
    qa = s[f"{sub}/0_30_s_academic_oe_v0_1_qa_processed/0"]
    assert [r for r, _ in texts(qa)] == ["user", "assistant", "user", "assistant"]
    assert not any("<image>" in m["content"] or "<video>" in m["content"] for x in good(samples) for m in x.messages)
    assert cap.label == f"{sub}_videos_1.tar.gz:academic_source/Charades/AAA.mp4" and cap.media_kind == "video"
    assert Path(cap.media).is_relative_to(tmp_path / "cache") and Path(cap.media).is_file()
    assert cap.extra["orig_id"] == "v_a"
    assert "conversations" in s[f"{sub}/0_30_s_academic_oe_v0_1_qa_processed/1"].error
    assert {x.extra["subset"] for x in good(run("llava-video", root, split="1_2_m_youtube_v0_1",
                                                cache_dir=str(tmp_path / "cache")))} == {"1_2_m_youtube_v0_1"}
    assert len(run("llava-video", root, extra={"annotations": "cap"}, cache_dir=str(tmp_path / "cache"))) == 4
    unpacked = fx.build_llava_video(tmp_path / "unpacked", archive=False)  # videos already in the subset folder
    first = run("llava-video", unpacked, cache_dir=str(tmp_path / "c2"))[0]
    assert first.media == str(unpacked / sub / "academic_source/Charades/AAA.mp4") and first.label is None


# --------------------------------------------------------------------------- smoltalk

def test_smoltalk_is_text_only_keeps_system_and_selects_subset_and_split(roots):
    root = roots["smoltalk"]
    samples = run("smoltalk", root)
    assert [s.id for s in samples] == ["all-train-00000000", "all-train-00000001", "all-train-00000002"]
    first = samples[0]
    assert texts(first) == [("system", "Be brief."), ("user", "2+2?"), ("assistant", "4")]
    assert first.media is None and first.kind == "text" and first.extra["origin"] == "math"
    assert "narrator" in samples[2].error
    assert [s.id for s in run("smoltalk", root, split="all:test")] == ["all-test-00000000"]
    both = run("smoltalk", root, split="everyday-conversations,all:test")
    assert [s.id for s in both] == ["everyday-conversations-train-00000000", "everyday-conversations-train-00000001",
                                    "all-test-00000000"]
    with pytest.raises(DataError, match="no-such-subset"):
        run("smoltalk", root, split="no-such-subset")


def test_smoltalk_without_a_messages_column_is_malformed(tmp_path):
    import pyarrow as pa

    fx.write_parquet(tmp_path / "data/all/train-00000-of-00001.parquet", [{"text": "hi"}],
                     pa.schema([("text", pa.string())]))
    with pytest.raises(DataError, match="missing column.*messages"):
        run("smoltalk", tmp_path)


# --------------------------------------------------------------------------- RLAIF-V

def test_rlaif_v_is_dpo_with_chosen_and_rejected(roots):
    samples = run("rlaif-v", roots["rlaif-v"])
    assert [s.id for s in samples] == ["RLAIF-V-Dataset_000-000000", "RLAIF-V-Dataset_000-000001",
                                       "RLAIF-V-Dataset_001-000000", "RLAIF-V-Dataset_001-000001"]
    s = samples[1]
    assert texts(s) == [("user", "Describe image 1.")]
    assert s.extra["chosen"] == "Accurate description 1." and s.extra["rejected"] == "Hallucinated description 1."
    assert s.media == fx.png_bytes() and s.media_kind == "image" and s.extra["ds_name"] == "RLAIF-V"
    assert "no image" in samples[3].error


# --------------------------------------------------------------------------- MVBench

def test_mvbench_maps_tasks_to_zip_members_and_answers_to_letters(roots):
    root = roots["mvbench"]
    samples = by_id(run("mvbench", root))
    assert sorted(samples) == ["action_sequence-0000", "egocentric_navigation-0000", "episodic_reasoning-0000",
                               "fine_grained_pose-0000", "object_interaction-0000", "scene_transition-0000",
                               "scene_transition-0001", "scene_transition-0002"]
    assert "get them from rose1.ntu.edu.sg" in samples["fine_grained_pose-0000"].error  # not on the Hub any more
    seq = samples["action_sequence-0000"]
    assert seq.extra["answer"] == "B" and seq.extra["options"][1] == "Sat on the bed."
    assert seq.extra["category"] == "action_sequence" and seq.media_kind == "video"
    assert str(seq.media) == "star.zip:star/Charades_v1_480/ZS9XR.mp4"  # read in place
    assert seq.extra["window"] == [0.25, 1.75]  # whole original video: sample inside its window
    assert seq.extra["cluster"] == "star/Charades_v1_480/ZS9XR.mp4"
    seg = samples["object_interaction-0000"]
    assert str(seg.media) == "star.zip:star/Charades_segment/ZS9XR_seg1.mp4" and "window" not in seg.extra
    assert seg.extra["answer"] == "C"
    ep = samples["episodic_reasoning-0000"]
    assert ep.media_kind == "frames" and ep.media.is_dir and ep.extra["answer"] == "A"
    assert str(samples["egocentric_navigation-0000"].media) == "vlnqa.zip:vlnqa/nav_0001.mp4"
    assert samples["scene_transition-0000"].extra["answer"] == "B"
    assert "not one of the candidates" in samples["scene_transition-0001"].error
    missing = samples["scene_transition-0002"]
    assert missing.label == "scene_qa/video/s3.mp4" and "no video/*.zip" in missing.error
    only = run("mvbench", root, split="scene_transition")
    assert {s.extra["category"] for s in good(only)} == {"scene_transition"}
    with pytest.raises(DataError, match="unknown task"):
        run("mvbench", root, split="nope")
    assert len(mvbench.TASKS) == 20 and mvbench.TASKS["egocentric_navigation"][0].path == "vlnqa"
    assert mvbench.allow_patterns(["scene_transition"]) == ["json/*", "video/scene_qa.zip", "video/data0613.zip",
                                                            "scene_qa/video/*"]


def test_mvbench_task_file_that_is_not_a_list_is_malformed(tmp_path):
    fx.write_json(tmp_path / "json/action_count.json", {"video": "a.mp4"})
    with pytest.raises(DataError, match="expected a JSON list"):
        run("mvbench", tmp_path)


# --------------------------------------------------------------------------- Video-MME

def test_video_mme_strips_letters_keeps_answers_and_filters_duration(roots):
    root = roots["video-mme"]
    samples = run("video-mme", root)
    assert [s.id for s in samples] == ["001-1", "001-2", "301-1", "301-2", "601-1"]
    s = samples[0]
    assert s.extra["options"] == ["One.", "Two.", "Three.", "Four."] and s.extra["answer"] == "C"
    assert s.extra["category"] == "Counting Problem" and s.extra["cluster"] == "vidA"
    assert s.extra["duration"] == "short" and str(s.media) == "videos_chunked_01.zip:data/vidA.mp4"
    assert str(samples[2].media) == "videos_chunked_02.zip:data/vidB.mkv"  # some videos are .mkv
    assert samples[2].extra["options"][3] == "A plant." and samples[2].extra["answer"] == "D"
    assert "not lettered A" in samples[3].error
    assert samples[4].label == "data/vidC.mp4" and "vidC" in samples[4].error
    assert [s.id for s in run("video-mme", root, split="medium")] == ["301-1", "301-2"]
    with pytest.raises(DataError, match="durations"):
        run("video-mme", root, split="huge")


# --------------------------------------------------------------------------- POPE

def test_pope_is_yes_no_mcq_clustered_by_image(roots):
    root = roots["pope"]
    samples = run("pope", root)
    assert [s.id for s in samples] == ["adversarial-1", "adversarial-2", "popular-1", "random-1", "random-2"]
    yes, no = samples[0], samples[1]
    assert yes.extra["options"] == ["yes", "no"] and yes.extra["answer"] == "A" and no.extra["answer"] == "B"
    assert yes.extra["category"] == "adversarial" and yes.extra["cluster"] == "COCO_val2014_000000310196"
    assert yes.media == fx.png_bytes() and yes.media_kind == "image"
    assert "neither yes nor no" in samples[4].error
    assert [s.id for s in run("pope", root, split="adversarial")] == ["adversarial-1", "adversarial-2"]
    assert [s.id for s in run("pope", root, split="random")] == ["random-1", "random-2"]  # no Full/random: filtered


def test_pope_copy_of_the_full_config_only_is_read_whole(tmp_path):
    root = fx.build_pope(tmp_path / "d")
    fx.write_parquet(root / "Full" / "random-00000-of-00001.parquet", [
        {"id": "9", "question_id": "1", "question": "Is there a cat in the image?", "answer": "no",
         "image_source": "COCO_val2014_000000000042", "image": fx.img(), "category": "random"}], fx.POPE_SCHEMA)
    import shutil
    shutil.rmtree(root / "data")
    samples = run("pope", root)
    assert [(s.id, s.extra["answer"]) for s in samples] == [("adversarial-1", "A"), ("adversarial-2", "B"),
                                                            ("random-1", "B")]


def test_pope_file_that_is_not_parquet_is_malformed(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data/test-00000-of-00001.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a readable parquet"):
        run("pope", tmp_path)


# --------------------------------------------------------------------------- ScienceQA

def test_scienceqa_adds_the_hint_and_allows_text_only_questions(roots):
    root = roots["scienceqa"]
    samples = run("scienceqa", root)  # default: ScienceQA-IMG test
    assert [s.id for s in samples] == ["ScienceQA-IMG-test-00000", "ScienceQA-IMG-test-00001",
                                       "ScienceQA-IMG-test-00002"]
    img_q = samples[0]
    assert img_q.extra["question"] == "Context: The picture shows three animals.\nWhich animal is a mammal?"
    assert img_q.extra["answer"] == "B" and img_q.extra["options"] == ["frog", "whale", "trout"]
    assert img_q.extra["category"] == "natural science" and img_q.extra["cluster"] == "ScienceQA-IMG-test-00000"
    assert img_q.media == fx.png_bytes() and img_q.media_kind == "image"
    assert "option index" in samples[2].error
    full = run("scienceqa", root, split="ScienceQA-FULL:test")
    text_q = full[2]
    assert text_q.media is None and text_q.media_kind is None and text_q.extra["question"] == "Which word is a noun?"
    assert [s.id for s in run("scienceqa", root, split="validation")] == ["ScienceQA-IMG-validation-00000"]


def test_scienceqa_reads_the_derek_thomas_layout(tmp_path):
    fx.build_scienceqa(tmp_path, layout="derek-thomas")
    samples = run("scienceqa", tmp_path)  # data/ is FULL: the IMG default keeps the rows with an image
    assert [s.id for s in samples] == ["ScienceQA-IMG-test-00000", "ScienceQA-IMG-test-00001",
                                       "ScienceQA-IMG-test-00002"]
    assert samples[0].extra["answer"] == "B"
    assert len(run("scienceqa", tmp_path, split="FULL:test")) == 4
    with pytest.raises(DataError, match="unknown config"):
        run("scienceqa", tmp_path, split="PARTIAL:test")


# --------------------------------------------------------------------------- MLVU

def test_mlvu_reads_the_multiple_choice_tasks_only(roots):
    root = roots["mlvu"]
    samples = run("mlvu", root)
    assert [s.id for s in samples] == ["1_plotQA-0000", "1_plotQA-0001", "2_needle-0000", "4_count-0000",
                                       "4_count-0001"]
    s = samples[0]
    assert s.extra["answer"] == "C" and s.extra["options"][2] == "Green"
    assert s.extra["category"] == "plotQA" and s.extra["cluster"] == "movie101_66.mp4"
    assert s.media == str(root / "MLVU/video/1_plotQA/movie101_66.mp4") and Path(s.media).is_file()
    assert s.extra["duration"] == 246.0
    assert samples[1].extra["answer"] == "C" and samples[3].extra["answer"] == "D"
    assert samples[2].extra["category"] == "needle"  # its rows say question_type findNeedle
    assert "candidates" in samples[4].error
    # the MLVU/ folder itself is an accepted input too
    assert [s.id for s in run("mlvu", root / "MLVU", split="4_count")] == ["4_count-0000", "4_count-0001"]


# --------------------------------------------------------------------------- Hub ids

def test_a_failed_download_is_one_data_error_line(tmp_path, monkeypatch):
    def offline(**kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'.\nCheck your connection.")

    monkeypatch.setattr(_hub, "_snapshot_download", offline)
    with pytest.raises(DataError, match=r"cannot fetch Hub dataset 'lmms-lab/POPE'") as e:
        run("pope", "lmms-lab/POPE", cache_dir=str(tmp_path))
    assert "\n" not in str(e.value)


def test_option_letters_must_run_in_order():
    assert _hub.strip_option_letters(["A. x", "B) y", "(C) z"]) == ["x", "y", "z"]
    assert _hub.strip_option_letters(["x", "y"]) == ["x", "y"]
    with pytest.raises(ValueError):
        _hub.strip_option_letters(["A. x", "C. y"])


@pytest.mark.parametrize("name, builder", [("scienceqa", "build_scienceqa"), ("mvbench", "build_mvbench")])
def test_precompute_keeps_text_only_mcq_and_frame_folders(tmp_path, name, builder):
    """Image-less ScienceQA questions stay (text-only MCQ) and MVBench TVQA frame folders decode."""
    import fixtures_datasets as fx

    from fvlm_cli.data.precompute import run_precompute
    from fvlm_cli.data.shards import iter_shard_samples

    root = getattr(fx, builder)(tmp_path / "in")
    out = tmp_path / "out"
    split = "FULL:test" if name == "scienceqa" else None  # FULL holds the text-only questions
    summary = run_precompute(name, str(root), out, workers=0, progress=False,
                             opts=SourceOptions(media=MediaConfig(image_size=32), split=split))
    records = [s["json"] for s in iter_shard_samples(out, decode="bytes")]
    failures = (out / "failures.jsonl").read_text().splitlines() if (out / "failures.jsonl").exists() else []
    reasons = " ".join(failures)
    assert "needs a video or image" not in reasons and "frames" not in reasons, reasons
    assert records and all(r["kind"] == "mcq" for r in records)
    if name == "scienceqa":
        assert sorted(r["frame_count"] for r in records) == [0, 1, 1]
    else:
        assert all(r["frame_count"] > 0 for r in records)
