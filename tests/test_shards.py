"""The shard format (SPEC §3.2): tar members, json records, atomic writes, manifest aggregation, reading back."""

from __future__ import annotations

import hashlib
import json
import tarfile

import numpy as np
import pytest

from fvlm_cli.data import shards
from fvlm_cli.errors import DataError

BASE_KEYS = {"id", "source", "kind", "frame_count", "timestamps", "messages"}
CHAT = [{"role": "user", "content": "What is it?"}, {"role": "assistant", "content": "A red square."}]


def frames(t: int, size: int = 32) -> np.ndarray:
    """[t, size, size, 3]: smooth gradients, a different brightness per frame (JPEG keeps them close)."""
    ramp = np.linspace(0, 150, size, dtype=np.float32)
    img = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1), np.full((size, size), 60.0)], -1)
    return np.stack([img + 25 * k for k in range(t)]).astype(np.uint8)


def write_example(path) -> shards.ShardInfo:
    with shards.ShardWriter(path) as w:
        w.write(shards.sample_key(0, "clip.mp4"), shards.sample_record(
            "clip.mp4", "videos", "caption", CHAT, [0.5, 1.5, 2.5, 3.5]), frames(4))
        w.write(shards.sample_key(1, "img"), shards.sample_record("img", "videos", "sft", CHAT, [0.0]), frames(1))
        w.write(shards.sample_key(2, "chat-7"), shards.sample_record("chat-7", "smoltalk", "text", CHAT, []))
        mcq = {"question": "Which colour?", "options": ["red", "blue"], "answer": "A", "category": "colour",
               "cluster": "vid3"}
        w.write(shards.sample_key(3, "q/1"), shards.sample_record("q/1", "synthetic", "mcq", CHAT, [0.5], mcq),
                frames(1))
        dpo = {"chosen": "red", "rejected": "blue"}
        w.write(shards.sample_key(4, "p.1"), shards.sample_record("p.1", "rlaif-v", "dpo", CHAT, [0.0], dpo),
                frames(1))
        return w.close()


def test_records_hold_exactly_the_spec_keys():
    assert set(shards.sample_record("a", "s", "caption", CHAT, [0.0])) == BASE_KEYS
    assert set(shards.sample_record("a", "s", "text", CHAT, [])) == BASE_KEYS
    assert shards.sample_record("a", "s", "sft", CHAT, [0.0], media_type="image")["media_type"] == "image"
    dpo = shards.sample_record("a", "s", "dpo", CHAT, [0.0], {"chosen": "x", "rejected": "y", "junk": 1})
    assert set(dpo) == BASE_KEYS | {"chosen", "rejected"}
    mcq = shards.sample_record("a", "s", "mcq", CHAT, [0.0], {"question": "q", "options": ["a", "b"], "answer": "A"})
    assert set(mcq) == BASE_KEYS | {"question", "options", "answer", "category", "cluster"}
    assert mcq["cluster"] == "a"  # no video id given: each question is its own cluster


def test_tar_members_and_round_trip(tmp_path):
    info = write_example(tmp_path / "x.tar")
    assert info.samples == 5 and info.name == "x.tar"
    assert info.sha256 == hashlib.sha256((tmp_path / "x.tar").read_bytes()).hexdigest()
    assert not list(tmp_path.glob("*.tmp*"))
    with tarfile.open(tmp_path / "x.tar") as tar:
        names = tar.getnames()
    # webdataset groups members by the part before the first dot: keys carry no dots or slashes
    keys = [n.split(".", 1)[0] for n in names]
    assert all("/" not in k for k in keys)
    assert [n for n in names if n.startswith("000000000-")] == [f"000000000-clip_mp4.{t:03d}.jpg" for t in range(4)] + [
        "000000000-clip_mp4.json"]
    assert [n for n in names if n.startswith("000000002-")] == ["000000002-chat-7.json"]  # text-only: no jpg

    samples = list(shards.iter_shard_samples(tmp_path / "x.tar"))
    assert [s["json"]["id"] for s in samples] == ["clip.mp4", "img", "chat-7", "q/1", "p.1"]
    assert [len(s["frames"]) for s in samples] == [4, 1, 0, 1, 1]
    assert all(f.size == (32, 32) and f.mode == "RGB" for s in samples for f in s["frames"])
    assert samples[0]["json"] == {"id": "clip.mp4", "source": "videos", "kind": "caption", "frame_count": 4,
                                  "timestamps": [0.5, 1.5, 2.5, 3.5], "messages": CHAT}
    assert samples[3]["json"]["options"] == ["red", "blue"] and samples[3]["json"]["cluster"] == "vid3"
    assert samples[4]["json"]["chosen"] == "red"
    # JPEG at quality 90 stays close to the original pixels
    arr = np.asarray(samples[0]["frames"][2], dtype=np.float32)
    assert np.abs(arr - frames(4)[2]).mean() < 3
    as_numpy = next(shards.iter_shard_samples(tmp_path / "x.tar", decode="numpy"))
    assert as_numpy["frames"][0].shape == (32, 32, 3)


def test_same_samples_same_bytes(tmp_path):
    assert write_example(tmp_path / "a.tar").sha256 == write_example(tmp_path / "b.tar").sha256


def test_unfinished_writer_publishes_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with shards.ShardWriter(tmp_path / "y.tar") as w:
            w.write("000000000-a", shards.sample_record("a", "s", "caption", CHAT, [0.0]), frames(1))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    w = shards.ShardWriter(tmp_path / "z.tar")  # a killed process never reaches close(): only a temp file
    w.write("000000000-a", shards.sample_record("a", "s", "caption", CHAT, [0.0]), frames(1))
    assert not (tmp_path / "z.tar").exists()
    w.abort()


def test_frame_count_must_match(tmp_path):
    with shards.ShardWriter(tmp_path / "y.tar") as w:
        with pytest.raises(ValueError):
            w.write("000000000-a", shards.sample_record("a", "s", "caption", CHAT, [0.0, 1.0]), frames(1))
        w.abort()


@pytest.mark.parametrize("kind,messages,media,extra,match", [
    ("video", CHAT, "a.mp4", {}, "unknown sample kind"),
    ("caption", [], "a.mp4", {}, "no messages"),
    ("caption", [{"role": "bot", "content": "x"}], "a.mp4", {}, "malformed message"),
    ("caption", CHAT, None, {}, "needs a video or image"),
    ("text", CHAT, "a.mp4", {}, "cannot have media"),
    ("dpo", CHAT, "a.jpg", {"chosen": "x"}, "lacks rejected"),
    ("mcq", CHAT, "a.mp4", {"question": "q"}, "lacks options, answer"),
])
def test_check_sample_rejects(kind, messages, media, extra, match):
    with pytest.raises(DataError, match=match):
        shards.check_sample("a", kind, messages, media, extra)


def test_manifest_aggregates_records():
    recs = [
        {"name": "s-p000of002-000000.tar", "part": "0/2", "samples": 3, "sha256": "aa", "bytes": 10,
         "counts": {"source": {"x": 3}, "kind": {"caption": 2, "text": 1}}, "frames": {"0": 1, "4": 2},
         "failures": [{"id": "b", "input": "b.mp4", "reason": "bad"}]},
        {"name": "s-p001of002-000000.tar", "part": "1/2", "samples": 0, "sha256": None, "bytes": 0,
         "counts": {"source": {}, "kind": {}}, "frames": {}, "failures": [{"id": "c", "input": None, "reason": "r"}]},
        {"name": "s-p001of002-000001.tar", "part": "1/2", "samples": 1, "sha256": "bb", "bytes": 5,
         "counts": {"source": {"x": 1}, "kind": {"caption": 1}}, "frames": {"4": 1}, "failures": []},
    ]
    m = shards.build_manifest(recs, source="s", input="in", options={"fps": 1.0}, n_parts=2, parts_complete=[1])
    assert m["samples"] == 4 and m["failures"] == 2
    assert m["counts"] == {"source": {"x": 4}, "kind": {"caption": 3, "text": 1}}
    assert m["frames_histogram"] == {"0": 1, "4": 3}
    assert [s["name"] for s in m["shards"]] == ["s-p000of002-000000.tar", "s-p001of002-000001.tar"]  # no empty shard
    assert m["complete"] is False and m["parts"] == {"n": 2, "complete": [1]} and m["part"] is None
    assert m["options"] == {"fps": 1.0} and m["fvlm_version"]


def test_read_manifest_errors(tmp_path):
    with pytest.raises(DataError, match="no manifest.json"):
        shards.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{nope")
    with pytest.raises(DataError, match="unreadable"):
        shards.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": []}))
    assert shards.read_manifest(tmp_path) == {"shards": []}
    with pytest.raises(DataError, match="not found"):
        shards.shard_paths(tmp_path / "missing")
