"""webvid (over a local HTTP server), openvid, videos and synthetic, in their published layouts; the
download rules (http(s) only, timeout, size cap, retries); the source registry."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from media_factory import write_image, write_video

from fvlm_cli.data import shards
from fvlm_cli.data.download import FetchOptions, fetch
from fvlm_cli.data.precompute import run_precompute
from fvlm_cli.data.sources import SOURCES, get_source, openvid, videos, webvid
from fvlm_cli.data.sources.base import SourceOptions
from fvlm_cli.settings import MediaConfig
from fvlm_cli.errors import DataError

SPEC_SOURCES = ["webvid", "openvid", "videos", "cauldron", "llava-video", "smoltalk", "rlaif-v", "mvbench",
                "video-mme", "pope", "scienceqa", "mlvu", "synthetic"]
FAST = FetchOptions(timeout=0.5, max_bytes=200_000, retries=1, backoff=0.01)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> bytes:
    return write_video(tmp_path_factory.mktemp("clip") / "c.mp4", seconds=2, fps=10, size=(64, 48)).read_bytes()


def failures(out: Path) -> dict[str, str]:
    return {f["id"]: f["reason"] for f in map(json.loads, (out / "failures.jsonl").read_text().splitlines())}


def records(out: Path) -> dict[str, dict]:
    return {s["json"]["id"]: s for s in shards.iter_shard_samples(out)}


# ---------------------------------------------------------------- registry

def test_registry_names_every_spec_source():
    assert sorted(SOURCES) == sorted(SPEC_SOURCES)
    for name in ("webvid", "openvid", "videos", "synthetic"):
        assert get_source(name).NAME == name
    with pytest.raises(DataError, match="unknown source 'webvids'; valid sources: webvid, openvid"):
        get_source("webvids")


# ---------------------------------------------------------------- downloads

def test_fetch_rules(http_server, tmp_path, clip):
    http_server.files["/ok.mp4"] = clip
    path = fetch(f"{http_server.url}/ok.mp4", tmp_path, timeout=2)
    assert path.read_bytes() == clip and path.suffix == ".mp4"

    with pytest.raises(DataError, match="only http"):
        fetch("ftp://example.com/a.mp4", tmp_path)
    with pytest.raises(DataError, match="only http"):
        fetch("file:///etc/passwd", tmp_path)

    with pytest.raises(DataError, match="HTTP 404"):
        fetch(f"{http_server.url}/missing.mp4", tmp_path, retries=3, backoff=0.01)
    assert http_server.hits["/missing.mp4"] == 1  # a 404 is not retried

    http_server.files["/flaky.mp4"] = clip
    http_server.fail["/flaky.mp4"] = [503, 502]
    assert fetch(f"{http_server.url}/flaky.mp4", tmp_path, retries=2, backoff=0.01).read_bytes() == clip
    assert http_server.hits["/flaky.mp4"] == 3

    http_server.files["/down.mp4"] = clip
    http_server.fail["/down.mp4"] = [500] * 5
    with pytest.raises(DataError, match=r"after 3 attempts: HTTP 500"):
        fetch(f"{http_server.url}/down.mp4", tmp_path, retries=2, backoff=0.01)

    http_server.files["/big.bin"] = b"\0" * 50_000
    with pytest.raises(DataError, match="over the .* size cap"):
        fetch(f"{http_server.url}/big.bin", tmp_path, max_bytes=10_000)
    http_server.files["/stream.bin"] = b"\0" * 50_000
    http_server.no_length.add("/stream.bin")  # no Content-Length: the cap is enforced while streaming
    with pytest.raises(DataError, match="exceeds the .* size cap while downloading"):
        fetch(f"{http_server.url}/stream.bin", tmp_path, max_bytes=10_000)

    http_server.files["/slow.mp4"] = clip
    http_server.delay["/slow.mp4"] = 1.0
    with pytest.raises(DataError, match=r"after 2 attempts: timed out after 0.3 s"):
        fetch(f"{http_server.url}/slow.mp4", tmp_path, timeout=0.3, retries=1, backoff=0.01)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial files left


def test_a_trickling_server_is_abandoned_after_max_seconds_and_a_full_disk_is_not_its_fault(http_server, tmp_path,
                                                                                           clip, monkeypatch):
    import errno

    from fvlm_cli.data import download
    from fvlm_cli.errors import StorageError

    http_server.files["/drip.mp4"] = b"\0" * 20_000
    http_server.trickle["/drip.mp4"] = 0.1  # never 0.5 s of silence, but 2 s in all
    t0 = time.monotonic()
    with pytest.raises(DataError, match=r"after 2 attempts: did not finish within 0.6 s"):
        fetch(f"{http_server.url}/drip.mp4", tmp_path, timeout=0.5, retries=1, backoff=0.01, max_seconds=0.6)
    assert time.monotonic() - t0 < 4 and http_server.hits["/drip.mp4"] == 2

    http_server.files["/ok.mp4"] = clip
    real_open = open

    def full_disk_open(path, mode="r", *a, **kw):
        if "w" in mode and ".part" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr(download, "open", full_disk_open, raising=False)
    with pytest.raises(StorageError, match="No space left on device"):
        fetch(f"{http_server.url}/ok.mp4", tmp_path / "d", retries=3, backoff=0.01)
    assert http_server.hits["/ok.mp4"] == 1  # not retried: the server was not at fault


# ---------------------------------------------------------------- webvid

def test_webvid_over_http(http_server, tmp_path, clip):
    http_server.files["/videos/1.mp4"] = clip
    http_server.files["/videos/2.mp4"] = clip
    http_server.files["/videos/slow.mp4"] = clip
    http_server.delay["/videos/slow.mp4"] = 1.5
    http_server.files["/videos/huge.mp4"] = clip + b"\0" * 300_000
    u = http_server.url
    (tmp_path / "results_2M_train.csv").write_text(
        "videoid,contentUrl,duration,page_dir,name\n"
        f"1,{u}/videos/1.mp4,PT00H00M02S,001,Aerial view of a red square\n"
        f"404,{u}/videos/missing.mp4,PT00H00M02S,001,gone\n"
        f"3,{u}/videos/slow.mp4,PT00H00M02S,001,too slow\n"
        f"4,{u}/videos/huge.mp4,PT00H00M02S,001,too big\n"
        f"5,,PT00H00M02S,001,no url\n"
        f"6,ftp://example.com/6.mp4,PT00H00M02S,001,wrong scheme\n"
        f'2,{u}/videos/2.mp4,PT00H00M02S,002,"Slow motion, a square moves"\n')
    out = tmp_path / "out"
    summary = run_precompute("webvid", str(tmp_path), out, workers=0, progress=False, fetch_options=FAST,
                             opts=SourceOptions(media=MediaConfig(image_size=32)))
    assert summary["samples"] == 2 and summary["failures"] == 5

    got = records(out)
    assert list(got) == ["1", "2"]
    assert got["1"]["json"]["messages"] == [
        {"role": "user", "content": "What would be the WebVid caption for this video?"},
        {"role": "assistant", "content": "Aerial view of a red square"}]
    assert got["2"]["json"]["messages"][1]["content"] == "Slow motion, a square moves"
    assert got["1"]["json"]["kind"] == "caption" and got["1"]["json"]["frame_count"] == 2

    reasons = failures(out)
    assert "HTTP 404" in reasons["404"] and "/videos/missing.mp4" in reasons["404"]
    assert "timed out after 0.5 s" in reasons["3"]
    assert "size cap" in reasons["4"]
    assert "empty contentUrl" in reasons["5"]
    assert "only http(s)" in reasons["6"]
    assert http_server.hits["/videos/missing.mp4"] == 1
    assert not [p for p in (out / ".fvlm-state" / "downloads").rglob("*") if p.is_file()]  # dropped once used


def test_retry_failed_redoes_only_shards_with_failures(http_server, tmp_path, clip):
    u = http_server.url
    http_server.files["/a.mp4"] = clip
    (tmp_path / "m.csv").write_text("videoid,contentUrl,duration,page_dir,name\n"
                                    f"a,{u}/a.mp4,PT2S,p,first\nb,{u}/b.mp4,PT2S,p,second\n"
                                    f"c,{u}/a.mp4,PT2S,p,third\n")
    kw = dict(workers=0, progress=False, fetch_options=FAST, shard_size=2, opts=SourceOptions(media=MediaConfig(image_size=32)))
    out = tmp_path / "out"
    assert run_precompute("webvid", str(tmp_path / "m.csv"), out, **kw)["failures"] == 1
    http_server.files["/b.mp4"] = clip  # the server is back
    assert run_precompute("webvid", str(tmp_path / "m.csv"), out, **kw)["failures"] == 1  # plain resume
    again = run_precompute("webvid", str(tmp_path / "m.csv"), out, retry_failed=True, **kw)
    assert again["failures"] == 0 and again["shards_resumed"] == 1
    assert list(records(out)) == ["a", "b", "c"] and failures(out) == {}


def test_webvid_layout_errors_and_local_videos(tmp_path, clip):
    (tmp_path / "a.csv").write_text("video,caption\nx.mp4,hello\n")
    with pytest.raises(DataError, match="not a WebVid metadata CSV"):
        webvid.iter_samples(str(tmp_path / "a.csv"), SourceOptions())
    with pytest.raises(DataError, match="no metadata CSV for split 'val'"):  # nothing here is marked val
        webvid.iter_samples(str(tmp_path), SourceOptions(split="val"))
    with pytest.raises(DataError, match="--split is train or val"):
        webvid.iter_samples(str(tmp_path), SourceOptions(split="test"))
    # data/{train,val}/partitions/NNNN.csv (the Hub layout), with some videos already on disk
    for split in ("train", "val"):
        part = tmp_path / "hub" / "data" / split / "partitions"
        part.mkdir(parents=True)
        (part / "0000.csv").write_text("videoid,contentUrl,duration,page_dir,name\n"
                                       f"{split}1,https://x.test/{split}1.mp4,PT1S,pd,{split} one\n")
    (tmp_path / "local" / "pd").mkdir(parents=True)
    (tmp_path / "local" / "pd" / "val1.mp4").write_bytes(clip)
    samples = list(webvid.iter_samples(str(tmp_path / "hub"), SourceOptions(
        split="val", extra={"videos_dir": str(tmp_path / "local")})))
    assert [(s.id, s.media) for s in samples] == [("val1", str(tmp_path / "local" / "pd" / "val1.mp4"))]
    train = list(webvid.iter_samples(str(tmp_path / "hub"), SourceOptions()))  # never val rows by default
    assert [s.id for s in train] == ["train1"] and train[0].media == "https://x.test/train1.mp4"


# ---------------------------------------------------------------- openvid

def make_openvid(root: Path, video_dir: str) -> None:
    (root / video_dir).mkdir(parents=True, exist_ok=True)
    for name in ("c---a_0.mp4", "c---b_1.mp4"):
        write_video(root / video_dir / name, seconds=2, fps=10, size=(64, 48))
    header = "video,caption,aesthetic score,motion score,temporal consistency score,camera motion,frame,fps,seconds"
    (root / "OpenVid-1M.csv").write_text(
        f"{header}\n"
        "c---a_0.mp4,\"A square glides, slowly, across.\",5.1,3.2,0.99,static,20,10,2\n"
        "missing.mp4,Nothing here,5,3,0.9,pan_right,20,10,2\n"
        "c---b_1.mp4,A second clip,4.8,2.9,0.98,static,20,10,2\n"
        "c---c_2.mp4,,4,2,0.9,static,20,10,2\n")


@pytest.mark.parametrize("video_dir", ["videos", "."])
def test_openvid_layout(tmp_path, video_dir):
    make_openvid(tmp_path, video_dir)
    out = tmp_path / "out"
    summary = run_precompute("openvid", str(tmp_path), out, workers=0, progress=False,
                             opts=SourceOptions(media=MediaConfig(image_size=32)))
    assert summary["samples"] == 2
    got = records(out)
    assert list(got) == ["c---a_0", "c---b_1"]
    assert got["c---a_0"]["json"]["messages"][1]["content"] == "A square glides, slowly, across."
    assert got["c---a_0"]["json"]["frame_count"] == 2
    reasons = failures(out)
    assert reasons == {"missing": "video missing.mp4 is in no OpenVid_part*.zip and no videos folder",
                       "c---c_2": "OpenVid-1M.csv row 4: empty caption"}


def test_openvid_csv_path_and_errors(tmp_path):
    make_openvid(tmp_path, "videos")
    samples = list(openvid.iter_samples(str(tmp_path / "OpenVid-1M.csv"), SourceOptions()))
    assert [s.error is None for s in samples] == [True, False, True, False]
    (tmp_path / "OpenVidHD.csv").write_text("video,caption\nc---b_1.mp4,HD caption\n")
    hd = list(openvid.iter_samples(str(tmp_path), SourceOptions(split="hd")))
    assert [(s.id, s.messages[1]["content"]) for s in hd] == [("c---b_1", "HD caption")]
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not an OpenVid CSV"):
        openvid.iter_samples(str(tmp_path / "bad.csv"), SourceOptions())
    (tmp_path / "OpenVid-1M.csv").unlink()
    with pytest.raises(DataError, match="expected one captions CSV"):
        openvid.iter_samples(str(tmp_path / "videos"), SourceOptions())


# ---------------------------------------------------------------- videos

def test_videos_folder(tmp_path):
    (tmp_path / "b").mkdir()
    write_video(tmp_path / "b" / "walk.mp4", seconds=2, fps=10)
    (tmp_path / "b" / "walk.txt").write_text("someone walks\n")
    write_image(tmp_path / "cat.jpg", (40, 30), (200, 100, 0))
    (tmp_path / "cat.txt").write_text("a cat")
    write_video(tmp_path / "plain.webm", seconds=1, fps=10, codec="libvpx-vp9")
    (tmp_path / "notes.md").write_text("ignored")
    samples = list(videos.iter_samples(str(tmp_path), SourceOptions()))
    assert [s.id for s in samples] == ["b/walk.mp4", "cat.jpg", "plain.webm"]
    walk, cat, plain = samples
    assert walk.messages == [{"role": "user", "content": "Describe this video."},
                             {"role": "assistant", "content": "someone walks"}]
    assert cat.media_kind == "image" and cat.messages[0]["content"] == "Describe this image."
    assert plain.error == "no caption"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no video or image files"):
        videos.iter_samples(str(tmp_path / "empty"), SourceOptions())
    with pytest.raises(DataError, match="neither a folder nor"):
        videos.iter_samples(str(tmp_path / "notes.md"), SourceOptions())


def test_videos_jsonl(tmp_path):
    (tmp_path / "media").mkdir()
    write_video(tmp_path / "media" / "a.mp4", seconds=3, fps=10)
    write_image(tmp_path / "media" / "b.png", (40, 40), (0, 0, 255))
    rows = [
        {"video": "media/a.mp4", "caption": "a square moves right"},
        {"id": "conv", "image": "media/b.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "Blue."},
            {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]},
        {"path": str(tmp_path / "media" / "a.mp4"), "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Moving?"},
            {"role": "assistant", "content": "Yes"}]},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
        {"video": "media/a.mp4"},
        {"video": "media/nope.mp4", "caption": "missing file"},
    ]
    lines = [json.dumps(r) for r in rows]
    lines.insert(3, "{broken json")
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    summary = run_precompute("videos", str(tmp_path / "data.jsonl"), out, workers=0, progress=False,
                             opts=SourceOptions(media=MediaConfig(image_size=32)))
    assert summary["samples"] == 4 and summary["failures"] == 3
    got = records(out)
    assert list(got) == ["data-0", "conv", "data-2", "data-4"]
    assert got["data-0"]["json"]["kind"] == "caption" and got["data-0"]["json"]["frame_count"] == 3
    conv = got["conv"]["json"]
    assert conv["kind"] == "sft" and conv["frame_count"] == 1
    assert conv["messages"] == [{"role": "user", "content": "What colour is it?"},
                                {"role": "assistant", "content": "Blue."},
                                {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "Yes."}]
    assert got["data-2"]["json"]["messages"][0] == {"role": "system", "content": "Be brief."}
    text = got["data-4"]
    assert text["json"]["kind"] == "text" and text["json"]["frame_count"] == 0 and text["frames"] == []
    reasons = failures(out)
    assert "invalid JSON" in reasons["data-3"]
    assert "no caption, conversations or messages" in reasons["data-5"]
    assert "no such file" in reasons["data-6"]


# ---------------------------------------------------------------- synthetic

def test_synthetic_end_to_end(tmp_path):
    pytest.importorskip("fvlm_cli.data.synthetic")
    extra = {"n_videos": 3, "n_text": 4, "seconds": 3, "fps": 4, "size": 32}
    out = tmp_path / "synth"
    summary = run_precompute("synthetic", None, out, workers=0, progress=False, shard_size=8,
                             opts=SourceOptions(media=MediaConfig(image_size=32), extra=dict(extra)))
    assert summary["failures"] == 0
    manifest = shards.read_manifest(out)
    assert set(manifest["counts"]["kind"]) == {"caption", "sft", "mcq", "dpo", "text"}
    assert manifest["counts"]["kind"]["text"] == 4
    assert len(list((out / "_media").rglob("*.mp4"))) == 3
    samples = list(shards.iter_shard_samples(out))
    for s in samples:
        record = s["json"]
        assert record["frame_count"] == len(s["frames"]) == (0 if record["kind"] == "text" else 3)
        if record["kind"] == "mcq":
            assert record["answer"] in "ABCDEFGH" and record["options"] and record["category"]
            assert record["cluster"]
        if record["kind"] == "dpo":
            assert record["chosen"] != record["rejected"]
    # the splits hold different videos; bench defaults to questions only
    bench = tmp_path / "bench"
    run_precompute("synthetic", None, bench, workers=0, progress=False,
                   opts=SourceOptions(media=MediaConfig(image_size=32), split="bench", extra=dict(extra)))
    bench_ids = {s["json"]["id"] for s in shards.iter_shard_samples(bench, decode="bytes")}
    assert shards.read_manifest(bench)["counts"]["kind"] == {"mcq": len(bench_ids)}
    assert not bench_ids & {s["json"]["id"] for s in samples}
    with pytest.raises(DataError, match="unknown option"):
        run_precompute("synthetic", None, tmp_path / "x", workers=0, progress=False,
                       opts=SourceOptions(extra={"n_vidoes": 3}))
