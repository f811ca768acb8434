"""Every published-dataset source, end to end through `run_precompute`, on a copy of its Hub layout exactly as
`hf download --local-dir` leaves it (archives included) AND on the same data fetched by Hub id through a local
stand-in of the Hub API (the real `snapshot_download`, honouring the source's allow_patterns): both must give
exactly the expected samples (kind, answer, frame count, window) and failure rows, and the input folder must
be byte-identical afterwards (nothing is extracted or written into it)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import fixtures_datasets as fx  # noqa: E402
from hub_standin import HubStandIn  # noqa: E402

from fvlm_cli.data import shards  # noqa: E402
from fvlm_cli.data.precompute import run_precompute  # noqa: E402
from fvlm_cli.data.sources import _hub, get_source  # noqa: E402
from fvlm_cli.data.sources.base import SourceOptions  # noqa: E402
from fvlm_cli.errors import DataError  # noqa: E402
from fvlm_cli.settings import MediaConfig  # noqa: E402

SUB = fx.LLAVA_SUBSET
YT = "1_2_m_youtube_v0_1"
YT_VIDEO = "liwei_youtube_videos/videos/youtube_video_2024"

# source -> (expected samples {id: (frame_count, answer or None)}, expected failures {id: (input, reason part)})
EXPECTED = {
    "cauldron": (
        {"ai2d-0000000": (1, None), "ai2d-0000001": (1, None), "ai2d-0000002": (2, None),
         "nlvr2-0000000": (2, None), "nlvr2-0000001": (2, None),
         "vqav2-0000000": (1, None), "vqav2-0000001": (0, None), "vqav2-0000002": (1, None)},
        {"ai2d-0000003": (None, "texts")}),
    "llava-video": (
        {f"{SUB}/{SUB}_cap_processed/0": (2, None), f"{SUB}/{SUB}_cap_processed/1": (2, None),
         f"{SUB}/0_30_s_academic_oe_v0_1_qa_processed/0": (2, None), f"{YT}/{YT}_cap_processed/0": (2, None)},
        {f"{SUB}/0_30_s_academic_oe_v0_1_qa_processed/1": (None, "conversations"),
         f"{YT}/{YT}_cap_processed/1": (f"{YT}/{YT_VIDEO}/ytb_gone.mp4", "is in no 1_2_m_youtube_v0_1/*_videos_")}),
    "smoltalk": ({"all-train-00000000": (0, None), "all-train-00000001": (0, None)},
                 {"all-train-00000002": (None, "unknown role 'narrator'")}),
    "rlaif-v": ({"RLAIF-V-Dataset_000-000000": (1, None), "RLAIF-V-Dataset_000-000001": (1, None),
                 "RLAIF-V-Dataset_001-000000": (1, None)},
                {"RLAIF-V-Dataset_001-000001": (None, "no image")}),
    "mvbench": (
        {"action_sequence-0000": (1, "B"), "egocentric_navigation-0000": (2, "B"),
         "episodic_reasoning-0000": (2, "A"), "object_interaction-0000": (2, "C"), "scene_transition-0000": (2, "B")},
        {"scene_transition-0001": (None, "not one of the candidates"),
         "scene_transition-0002": ("scene_qa/video/s3.mp4", "is in no video/*.zip"),
         "fine_grained_pose-0000": ("nturgbd_convert/S001C001P001R001A043_rgb.avi",
                                    "no longer ships the NTU RGB+D videos")}),
    "video-mme": ({"001-1": (2, "C"), "001-2": (2, "A"), "301-1": (2, "D")},
                  {"301-2": (None, "not lettered A"), "601-1": ("data/vidC.mp4", "video vidC is in neither")}),
    "pope": ({"adversarial-1": (1, "A"), "adversarial-2": (1, "B"), "popular-1": (1, "A"), "random-1": (1, "B")},
             {"random-2": (None, "neither yes nor no")}),
    "scienceqa": ({"ScienceQA-IMG-test-00000": (1, "B"), "ScienceQA-IMG-test-00001": (1, "A")},
                  {"ScienceQA-IMG-test-00002": (None, "not an option index")}),
    "mlvu": ({"1_plotQA-0000": (2, "C"), "1_plotQA-0001": (2, "C"), "2_needle-0000": (2, "C"), "4_count-0000": (2, "D")},
             {"4_count-0001": (None, "candidates")}),
    "openvid": ({"a": (2, None), "b": (2, None)},
                {"missing": ("missing.mp4", "is in no OpenVid_part*.zip"), "c": ("c.mp4", "empty caption")}),
}
HUB_OPTS = {"llava-video": {"split": f"{SUB},{YT}"}, "openvid": {"extra": {"parts": "all"}}}


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run(name: str, input, out: Path, cache: Path, **opts) -> tuple[dict, dict, dict]:
    """(records by id, failure rows by id, manifest)."""
    try:
        run_precompute(name, None if input is None else str(input), out, workers=0, progress=False,
                       opts=SourceOptions(media=MediaConfig(image_size=16), cache_dir=str(cache), **opts))
    except DataError as e:
        if "inputs failed" not in str(e):
            raise
    records = {s["json"]["id"]: s["json"] for s in shards.iter_shard_samples(out, decode="bytes")}
    rows = {r["id"]: r for r in map(json.loads, (out / shards.FAILURES).read_text().splitlines())}
    return records, rows, shards.read_manifest(out)


def check(name: str, records: dict, rows: dict, expected=None) -> None:
    want, want_fail = expected or EXPECTED[name]
    assert {i: (r["frame_count"], r.get("answer")) for i, r in records.items()} == want
    assert set(rows) == set(want_fail)
    for id, (label, reason) in want_fail.items():
        assert rows[id]["input"] == label and reason in rows[id]["reason"], rows[id]
        assert "/tmp" not in str(rows[id]["input"]) and ".cache" not in rows[id]["reason"]


@pytest.fixture
def hub(monkeypatch):
    standin = HubStandIn()
    monkeypatch.setattr(_hub, "_snapshot_download", standin.snapshot_download)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    yield standin
    standin.close()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_local_copy_and_hub_id_give_the_expected_samples(name, tmp_path, hub):
    root = fx.BUILDERS[name](tmp_path / "dataset")
    before = tree_digest(root)
    local = run(name, root, tmp_path / "out-local", tmp_path / "cache")
    check(name, *local[:2])
    assert tree_digest(root) == before  # the input folder is never written to
    assert not any((tmp_path / "cache").rglob("*.mp4")) or name == "llava-video"  # zips are read in place

    repo = get_source(name).HUB_REPO
    hub.add(repo, root)
    remote = run(name, None, tmp_path / "out-hub", tmp_path / "hubcache", **HUB_OPTS.get(name, {}))
    check(name, *remote[:2])
    assert remote[0] == local[0]
    assert {k: (v["input"], v["reason"]) for k, v in remote[1].items()} == \
           {k: (v["input"], v["reason"]) for k, v in local[1].items()}
    assert hub.fetched[repo], "the Hub path downloads through the stand-in"
    assert not any("9_summary" in f and f.endswith(".mp4") for f in hub.fetched[repo])  # never read: not fetched


def test_video_mme_keeps_the_fields_bench_reports_by(tmp_path):
    records, _, manifest = run("video-mme", fx.build_video_mme(tmp_path / "d"), tmp_path / "o", tmp_path / "c")
    assert records["301-1"]["meta"] == {"duration": "medium", "domain": "Sports", "sub_category": "Football",
                                        "video_id": "301", "videoID": "vidB"}
    assert records["001-1"]["cluster"] == "vidA" and records["001-1"]["category"] == "Counting Problem"
    assert manifest["counts"]["media"] == {"video": 3}


def test_mvbench_windows_are_applied_and_recorded(tmp_path):
    records, _, _ = run("mvbench", fx.build_mvbench(tmp_path / "d"), tmp_path / "o", tmp_path / "c")
    seq = records["action_sequence-0000"]  # whole Charades video, window [0.25, 1.75]: 1 frame at its centre
    assert seq["meta"]["window"] == [0.25, 1.75] and seq["timestamps"] == [1.0]
    ep = records["episodic_reasoning-0000"]  # 12 frames at 3 fps, window [1, 3]: frames 4 and 7
    assert ep["meta"]["window"] == [1.0, 3.0] and ep["timestamps"] == [1.333, 2.333]
    seg = records["object_interaction-0000"]  # a pre-cut segment: read whole, its start/end ignored
    assert "window" not in seg.get("meta", {}) and seg["timestamps"] == [0.5, 1.5]
    assert records["egocentric_navigation-0000"]["category"] == "egocentric_navigation"


def test_mvbench_zips_packed_without_their_folder_are_found(tmp_path):
    root = fx.build_mvbench_variant(tmp_path / "d", "flat-zips")
    records, rows, _ = run("mvbench", root, tmp_path / "o", tmp_path / "c")
    check("mvbench", records, rows)
    assert records["action_sequence-0000"]["meta"]["window"] == [0.25, 1.75]


def check_mvbench_video_revision(records: dict, rows: dict) -> None:
    want, want_fail = EXPECTED["mvbench"]
    check("mvbench", records, rows, ({**want, "action_sequence-0000": (2, "B")},
                                     {**want_fail, "scene_transition-0002": ("scene_qa/video/s3.mp4",
                                                                             "is in no video/*.zip and no folder")}))
    assert all("window" not in r.get("meta", {}) for r in records.values())
    assert records["episodic_reasoning-0000"]["timestamps"] == [0.5, 1.5]  # an mp4 segment, not frames


def test_mvbench_video_revision_reads_the_pre_cut_segments_whole(tmp_path, hub):
    """The `video` revision (lmms-eval's): folders at the root, clips pre-cut, so no window is applied; a Hub
    id fetches it with `--set revision=video` (main stays the default)."""
    video = fx.build_mvbench_variant(tmp_path / "video", "video-branch")
    check_mvbench_video_revision(*run("mvbench", video, tmp_path / "o1", tmp_path / "c")[:2])
    hub.add("OpenGVLab/MVBench", fx.build_mvbench(tmp_path / "main"))
    hub.add("OpenGVLab/MVBench", video, revision="video")
    check_mvbench_video_revision(*run("mvbench", None, tmp_path / "o", tmp_path / "c", extra={"revision": "video"})[:2])
    assert (tmp_path / "c" / "OpenGVLab--MVBench@video" / "star" / "Charades_segment").is_dir()
    check("mvbench", *run("mvbench", None, tmp_path / "o2", tmp_path / "c")[:2])  # the default is still main
    assert (tmp_path / "c" / "OpenGVLab--MVBench@video" / "star" / "Charades_segment").is_dir()
    main = run("mvbench", None, tmp_path / "o2", tmp_path / "c")  # the default is still main
    check("mvbench", *main[:2])


def test_mlvu_reads_lmms_evals_parquet_copy_locally_and_by_hub_id(tmp_path, hub):
    root = fx.build_mlvu_dev(tmp_path / "d")
    want = ({"q0": (2, "C"), "q1": (2, "D"), "q4": (2, "B")},
            {"q2": (None, "neither an option letter nor one of the candidates"),
             "q3": ("3_ego/ego_9.mp4", "video 3_ego/ego_9.mp4 is in no *.zip")})
    records, rows, _ = run("mlvu", root, tmp_path / "o1", tmp_path / "c")
    check("mlvu", records, rows, want)
    assert records["q0"]["question"] == "What colour is the hat?" and records["q0"]["category"] == "plotQA"
    # lmms-eval's prompt reads the whole field (options included): kept as it is
    assert records["q0"]["meta"]["doc_question"] == "What colour is the hat?\n(A) Red\n(B) Blue\n(C) Green"
    hub.add("sy1998/MLVU_dev", root)
    remote = run("mlvu", "sy1998/MLVU_dev", tmp_path / "o2", tmp_path / "c")
    check("mlvu", *remote[:2], want)
    only = run("mlvu", root, tmp_path / "o3", tmp_path / "c", split="4_count")
    assert sorted(list(only[0]) + list(only[1])) == ["q1", "q2"]
    bare = run("mlvu", root, tmp_path / "o4", tmp_path / "c", split="anomaly_reco")  # a task name with "_" in it
    assert list(bare[0]) == ["q4"] and not bare[1] and bare[0]["q4"]["category"] == "anomaly_reco"


def test_mlvu_names_tasks_alike_in_both_layouts(tmp_path):
    """The json rows say question_type `findNeedle` where lmms-eval's parquet and MLVU's own evaluation say
    `needle`: the category is the task's name in both; --split takes a task with or without its number, an
    unknown one is a one-line error, and MLVU_Test (answers unpublished) is refused with the reason."""
    root = fx.build_mlvu(tmp_path / "d")
    records, _, _ = run("mlvu", root, tmp_path / "o1", tmp_path / "c")
    assert {r["category"] for r in records.values()} == {"plotQA", "needle", "count"}
    needle = run("mlvu", root, tmp_path / "o2", tmp_path / "c", split="needle")[0]
    assert list(needle) == ["2_needle-0000"] and needle["2_needle-0000"]["category"] == "needle"
    with pytest.raises(DataError, match="unknown task.*findneedle"):
        run("mlvu", root, tmp_path / "o3", tmp_path / "c", split="findneedle")
    test = tmp_path / "test"
    fx.write_json(test / "test_multi_choice_tasks.json", [{"video": "t.mp4", "question": "Q?",
                                                          "candidates": ["a", "b", "c", "d", "e", "f"]}])
    with pytest.raises(DataError, match="MLVU_Test, whose answers are not published"):
        run("mlvu", test, tmp_path / "o4", tmp_path / "c")


def test_cauldron_multi_image_rows_are_one_sample_with_every_turn(tmp_path):
    root = fx.build_cauldron(tmp_path / "d")
    out = tmp_path / "o"
    records, _, manifest = run("cauldron", root, out, tmp_path / "c", split="nlvr2")
    two = records["nlvr2-0000001"]
    assert two["frame_count"] == 2 and two["media_type"] == "image"
    assert [m["content"] for m in two["messages"]] == ["Do both images show the same colour?", "Yes.",
                                                        "Which colour?", "Green."]
    frames = {s["json"]["id"]: s["frames"] for s in shards.iter_shard_samples(out, decode="numpy")}
    red, blue = frames["nlvr2-0000000"]  # the images in order, not replicated
    assert red[..., 0].mean() > 200 > red[..., 2].mean() and blue[..., 2].mean() > 200 > blue[..., 0].mean()
    assert manifest["counts"]["media"] == {"multi_image": 2}


def test_scienceqa_defaults_to_the_image_benchmark_and_never_mixes_configs(tmp_path):
    derek = fx.build_scienceqa(tmp_path / "derek", layout="derek-thomas")
    records, rows, _ = run("scienceqa", derek, tmp_path / "o1", tmp_path / "c")  # data/ = FULL; IMG = with image
    check("scienceqa", records, rows)
    lmms = fx.build_scienceqa(tmp_path / "lmms")
    full, _, _ = run("scienceqa", lmms, tmp_path / "o2", tmp_path / "c", split="FULL:test")
    assert full["ScienceQA-FULL-test-00002"]["frame_count"] == 0  # the text-only question is in FULL only
    assert len(full) == 3
    with pytest.raises(DataError, match="two configs"):
        run("scienceqa", lmms, tmp_path / "o3", tmp_path / "c", split="ScienceQA-IMG:test,ScienceQA-FULL:test")


def test_webvid_reads_train_partitions_by_default_and_val_only_when_asked(tmp_path, http_server, hub):
    from media_factory import write_video

    clip = write_video(tmp_path / "clip.mp4", seconds=2, fps=8, size=(64, 48)).read_bytes()
    for vid in ("101", "102", "901"):
        http_server.files[f"/videos/{vid}.mp4"] = clip
    root = fx.build_webvid(tmp_path / "d", http_server.url)
    before = tree_digest(root)
    train = run("webvid", root, tmp_path / "o1", tmp_path / "c")
    assert {i: r["frame_count"] for i, r in train[0].items()} == {"101": 2, "102": 2}
    assert train[1]["103"]["input"] == f"{http_server.url}/videos/gone.mp4" and "HTTP 404" in train[1]["103"]["reason"]
    val = run("webvid", root, tmp_path / "o2", tmp_path / "c", split="val")
    assert list(val[0]) == ["901"] and not val[1]
    assert tree_digest(root) == before
    hub.add("TempoFunk/webvid-10M", root)
    remote = run("webvid", None, tmp_path / "o3", tmp_path / "hc")
    assert remote[0] == train[0]
    assert sorted(hub.fetched["TempoFunk/webvid-10M"]) == ["data/train/partitions/0000.csv",
                                                           "data/train/partitions/0001.csv"]  # no val rows


def test_hub_defaults_fetch_a_documented_subset(tmp_path, hub):
    llava = fx.build_llava_video(tmp_path / "llava")
    hub.add("lmms-lab/LLaVA-Video-178K", llava)
    records, rows, _ = run("llava-video", None, tmp_path / "o1", tmp_path / "c1")
    assert {i.split("/")[0] for i in list(records) + list(rows)} == {SUB}  # the default subsets only
    assert all(f.startswith(SUB + "/") for f in hub.fetched["lmms-lab/LLaVA-Video-178K"])
    openvid = fx.build_openvid(tmp_path / "openvid")
    hub.add("nkp37/OpenVid-1M", openvid)
    records, rows, _ = run("openvid", None, tmp_path / "o2", tmp_path / "c2")  # default: part 0 only
    assert list(records) == ["a"] and list(rows) == ["c"]
    assert sorted(hub.fetched["nkp37/OpenVid-1M"]) == ["OpenVid_part0.zip", "data/train/OpenVid-1M.csv"]


def test_openvid_csv_at_the_repo_root_is_read_locally_and_fetched(tmp_path, hub):
    root = fx.build_openvid(tmp_path / "d", csv_dir=".")
    local = run("openvid", root, tmp_path / "o1", tmp_path / "c1")
    check("openvid", *local[:2])
    hub.add("nkp37/OpenVid-1M", root)
    remote = run("openvid", None, tmp_path / "o2", tmp_path / "c2", extra={"parts": "all"})
    check("openvid", *remote[:2])
    assert "OpenVid-1M.csv" in hub.fetched["nkp37/OpenVid-1M"]


def test_a_pattern_list_that_misses_the_archives_is_caught(tmp_path, hub, monkeypatch):
    """The stand-in honours allow_patterns: without the zips the questions fail, naming each video."""
    from fvlm_cli.data.sources import video_mme

    hub.add("lmms-lab/Video-MME", fx.build_video_mme(tmp_path / "d"))
    monkeypatch.setattr(video_mme, "ALLOW_PATTERNS", ["videomme/*.parquet"])
    with pytest.raises(DataError, match="all 5 inputs failed") as e:
        run_precompute("video-mme", None, tmp_path / "o", workers=0, progress=False,
                       opts=SourceOptions(media=MediaConfig(image_size=16), cache_dir=str(tmp_path / "c")))
    assert "Hint: the videos are not where the annotations point" in str(e.value)


def test_llava_video_archives_are_extracted_once_into_the_cache(tmp_path):
    root = fx.build_llava_video(tmp_path / "d")
    cache = tmp_path / "cache"
    run("llava-video", root, tmp_path / "o1", cache)
    extracted = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*.mp4"))
    assert len(extracted) == 3 and all(p.startswith("archives/") for p in extracted)
    stamp = {p: p.stat().st_mtime_ns for p in cache.rglob("*.mp4")}
    run("llava-video", root, tmp_path / "o2", cache)
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.mp4")} == stamp  # not extracted again
    with pytest.raises(DataError, match="inside the input"):
        run("llava-video", root, tmp_path / "o3", root / "cache-inside")


def test_llava_video_skips_the_repos_prompt_folders_and_llava_hound_without_videos(tmp_path):
    """A whole local copy: gpt4o_*_prompt/ are never subsets; llava_hound/ (annotations only: its videos are in
    ShareGPTVideo's repo) is read only when named, and its rows then say where the videos are."""
    root = fx.build_llava_video(tmp_path / "d")
    records, rows, _ = run("llava-video", root, tmp_path / "o1", tmp_path / "c")
    assert {r.split("/")[0] for r in list(records) + list(rows)} == {SUB, YT}
    _, hound, _ = run("llava-video", root, tmp_path / "o2", tmp_path / "c", split="llava_hound")
    (row,) = hound.values()
    assert row["input"] == "llava_hound/v_000123" and "ShareGPTVideo/train_video_and_instruction" in row["reason"]
    with pytest.raises(DataError, match="gpt4o_qa_prompt holds generation prompts"):
        run("llava-video", root, tmp_path / "o3", tmp_path / "c", split="gpt4o_qa_prompt")


def test_cli_fetches_a_hub_id_through_hf_endpoint(tmp_path):
    """The command as a user runs it, in a fresh process: HF_ENDPOINT points huggingface_hub at the stand-in."""
    import os
    import subprocess

    standin = HubStandIn()
    try:
        standin.add("lmms-lab/Video-MME", fx.build_video_mme(tmp_path / "d"))
        env = {**os.environ, "HF_ENDPOINT": standin.url, "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": "0"}
        res = subprocess.run([sys.executable, "-m", "fvlm_cli", "precompute", "video-mme", "--out", tmp_path / "o",
                              "--cache-dir", tmp_path / "c", "--workers", "0", "--image-size", "16", "--json"],
                             capture_output=True, text=True, env=env, timeout=300)
    finally:
        standin.close()
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["samples"] == 3 and summary["failures"] == 2
    assert sorted(standin.fetched["lmms-lab/Video-MME"]) == ["videomme/test-00000-of-00001.parquet",
                                                              "videos_chunked_01.zip", "videos_chunked_02.zip"]


def test_a_corrupt_archive_member_is_named_by_archive_and_member(tmp_path):
    root = fx.build_video_mme(tmp_path / "d")
    fx.zip_of(root / "videos_chunked_01.zip", {"data/vidA.mp4": b"not a video" * 100})
    records, rows, _ = run("video-mme", root, tmp_path / "o", tmp_path / "c")
    assert list(records) == ["301-1"]
    for id in ("001-1", "001-2"):
        assert rows[id]["input"] == "videos_chunked_01.zip:data/vidA.mp4"
        assert rows[id]["reason"].startswith("videos_chunked_01.zip:data/vidA.mp4: not a readable video")
