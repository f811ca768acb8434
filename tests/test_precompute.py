"""The precompute driver: shards + manifest + failures, resume, --part, --max-fail-ratio, kills, crashes, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from media_factory import write_image, write_video

from fvlm_cli.data import shards
from fvlm_cli.data.precompute import parse_part, run_precompute
from fvlm_cli.data.sources import SOURCES
from fvlm_cli.data.sources.base import RawSample, SourceOptions
from fvlm_cli.errors import DataError
from fvlm_cli.settings import MediaConfig

BASE_KEYS = {"id", "source", "kind", "frame_count", "timestamps", "messages"}
N_VIDEOS = 12
OPTS = dict(media=MediaConfig(image_size=32))


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    """12 captioned 3-second clips, a captioned image, a corrupt video and a video without caption."""
    root = tmp_path_factory.mktemp("media")
    for i in range(N_VIDEOS):
        write_video(root / f"clip{i:02d}.mp4", seconds=3, fps=10, size=(64, 48))
        (root / f"clip{i:02d}.txt").write_text(f"a red square, take {i}")
    write_image(root / "img.png", (80, 60), (0, 200, 0))
    (root / "img.txt").write_text("a green picture")
    (root / "bad.mp4").write_bytes(b"\x00not a video\x00" * 50)
    (root / "bad.txt").write_text("never read")
    write_video(root / "nocap.mp4", seconds=1, fps=10)
    return root


def run(media_dir, out, **kw) -> dict:
    kw.setdefault("workers", 0)
    kw.setdefault("shard_size", 4)
    kw.setdefault("progress", False)
    return run_precompute("videos", str(media_dir), out, opts=SourceOptions(**OPTS), **kw)


def ids_in(out) -> list[str]:
    return [s["json"]["id"] for s in shards.iter_shard_samples(out, decode="bytes")]


def cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fvlm_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, **kw)


def test_shards_manifest_and_failures(media_dir, tmp_path):
    out = tmp_path / "out"
    summary = run(media_dir, out)
    assert summary["samples"] == N_VIDEOS + 1 and summary["failures"] == 2

    manifest = shards.read_manifest(out)
    assert manifest["samples"] == N_VIDEOS + 1 and manifest["failures"] == 2 and manifest["complete"]
    assert manifest["counts"] == {"source": {"videos": N_VIDEOS + 1}, "kind": {"caption": N_VIDEOS + 1},
                                  "media": {"image": 1, "video": N_VIDEOS}}
    assert manifest["frames_histogram"] == {"1": 1, "3": N_VIDEOS}
    assert manifest["options"]["image_size"] == 32 and manifest["options"]["shard_size"] == 4
    assert manifest["part"] == "0/1" and manifest["fvlm_version"]
    # 15 samples in shards of 4: indexes 0-3, 4-7, 8-11, 12-14
    assert [s["name"] for s in manifest["shards"]] == [f"videos-p000of001-{k:06d}.tar" for k in range(4)]
    for entry in manifest["shards"]:
        path = out / entry["path"]
        assert shards.sha256_file(path) == entry["sha256"] and path.stat().st_size == entry["bytes"]
    assert sum(s["samples"] for s in manifest["shards"]) == N_VIDEOS + 1

    samples = list(shards.iter_shard_samples(out))
    assert len({s["json"]["id"] for s in samples}) == len(samples) == N_VIDEOS + 1
    for s in samples:
        record = s["json"]
        assert set(record) == BASE_KEYS | {"media_type"} and record["source"] == "videos"
        assert record["kind"] == "caption"
        assert record["media_type"] == ("image" if record["id"] == "img.png" else "video")
        assert record["frame_count"] == len(record["timestamps"]) == len(s["frames"])
        assert all(f.size == (32, 32) for f in s["frames"])
        assert record["messages"][0]["role"] == "user" and record["messages"][1]["role"] == "assistant"
    clip = next(s for s in samples if s["json"]["id"] == "clip03.mp4")["json"]
    assert clip["timestamps"] == [0.5, 1.5, 2.5] and clip["messages"][1]["content"] == "a red square, take 3"

    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failures] == ["bad.mp4", "nocap.mp4"]
    assert failures[0]["input"] == str(media_dir / "bad.mp4") and "bad.mp4: " in failures[0]["reason"]
    assert failures[1]["reason"] == "no caption"
    assert all("\n" not in f["reason"] for f in failures)
    assert not list(out.glob("*.tmp*"))


def test_resume_skips_finished_and_repairs_damaged(media_dir, tmp_path):
    out = tmp_path / "out"
    run(media_dir, out)
    before = shards.read_manifest(out)
    again = run(media_dir, out)
    assert again["shards_resumed"] == again["shards"] == 4
    assert shards.read_manifest(out)["shards"] == before["shards"]
    assert len((out / "failures.jsonl").read_text().splitlines()) == 2  # never appended twice

    # a shard damaged after the fact, one whose record was lost, and a half-written one from a killed run
    with open(out / "videos-p000of001-000001.tar", "ab") as f:
        f.write(b"\0" * 512)
    (out / ".fvlm-state" / "shards" / "videos-p000of001-000002.tar.json").unlink()
    (out / "videos-p000of001-000003.tar.tmp4242").write_bytes(b"partial")
    third = run(media_dir, out)
    assert third["shards_resumed"] == 2
    assert shards.read_manifest(out)["shards"] == before["shards"]  # rewritten byte for byte
    assert not list(out.glob("*.tmp*"))
    assert sorted(ids_in(out)) == sorted(set(ids_in(out)))


def test_resume_trusts_size_and_mtime_and_verify_rehashes(media_dir, tmp_path):
    """At terabytes, hashing every finished shard again on resume takes hours: a shard with its recorded size and
    mtime is trusted; a touched one is re-hashed (and kept when its bytes are the same); --verify re-hashes all."""
    out = tmp_path / "out"
    run(media_dir, out)
    shard = out / "videos-p000of001-000001.tar"
    good = shard.read_bytes()
    st = shard.stat()
    damaged = bytearray(good)
    damaged[1000:1100] = b"\xff" * 100  # bit rot: same size, and the mtime put back
    shard.write_bytes(bytes(damaged))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert run(media_dir, out)["shards_resumed"] == 4  # trusted: size and mtime as recorded
    verified = run(media_dir, out, verify=True)
    assert verified["shards_resumed"] == 3 and shard.read_bytes() == good  # found and rewritten

    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, bytes unchanged: hashed, kept
    assert run(media_dir, out)["shards_resumed"] == 4


def test_different_options_are_refused(media_dir, tmp_path):
    out = tmp_path / "out"
    run(media_dir, out)
    with pytest.raises(DataError, match="shard_size=4, not 5"):
        run(media_dir, out, shard_size=5)
    with pytest.raises(DataError, match="holds 'videos' shards"):
        run_precompute("synthetic", None, out, workers=0, progress=False)


def test_limit(media_dir, tmp_path):
    out = tmp_path / "out"
    summary = run_precompute("videos", str(media_dir), out, workers=0, progress=False,
                             opts=SourceOptions(media=MediaConfig(image_size=32), limit=5))
    assert summary["samples"] + summary["failures"] == 5


def test_parts_add_up_to_the_whole(media_dir, tmp_path):
    whole = tmp_path / "whole"
    run(media_dir, whole)
    parts = tmp_path / "parts"
    seen = []
    for i in range(3):
        run(media_dir, parts, part=(i, 3))
        manifest = shards.read_manifest(parts)
        assert manifest["complete"] == (i == 2) and manifest["parts"]["complete"] == list(range(i + 1))
        seen.append(set(ids_in(parts)) - set().union(*seen) if seen else set(ids_in(parts)))
    assert sum(len(s) for s in seen) == len(set().union(*seen))  # disjoint
    assert sorted(ids_in(parts)) == sorted(ids_in(whole))
    merged = shards.read_manifest(parts)
    assert merged["samples"] == N_VIDEOS + 1 and merged["failures"] == 2 and merged["part"] is None
    assert {s["part"] for s in merged["shards"]} == {"0/3", "1/3", "2/3"}
    assert len((parts / "failures.jsonl").read_text().splitlines()) == 2


def test_parse_part():
    assert parse_part("2/4") == (2, 4)
    for bad in ("3/2", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(DataError):
            parse_part(bad)


def test_cli_max_fail_ratio_exits_2_and_keeps_shards(media_dir, tmp_path):
    out = tmp_path / "out"
    res = cli("precompute", "videos", "--input", media_dir, "--out", out, "--image-size", 32, "--shard-size", 4,
              "--workers", 2, "--max-fail-ratio", 0.05, "--json")
    assert res.returncode == 2, res.stderr
    assert "max-fail-ratio" in res.stderr and "Traceback" not in res.stderr
    assert json.loads(res.stdout)["failures"] == 2  # --json still reports what was done
    assert shards.read_manifest(out)["samples"] == N_VIDEOS + 1
    assert len(list(out.glob("*.tar"))) == 4
    ok = cli("precompute", "videos", "--input", media_dir, "--out", out, "--image-size", 32, "--shard-size", 4,
             "--workers", 2, "--max-fail-ratio", 0.2, "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["shards_resumed"] == 4


def test_cli_all_failed_exits_2_with_the_top_reasons_and_a_hint(tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for i in range(3):
        write_video(bare / f"clip{i}.mp4", seconds=1, fps=10)
    out = tmp_path / "out"
    res = cli("precompute", "videos", "--input", bare, "--out", out, "--workers", 0, "--image-size", 16)
    assert res.returncode == 2, res.stderr
    line = [l for l in res.stderr.splitlines() if "inputs failed" in l]
    assert line and "all 3 inputs failed" in line[0] and "3x no caption" in line[0]
    assert "same-stem .txt" in line[0] and "JSONL" in line[0]  # what to do about it
    assert [json.loads(r)["input"] for r in (out / "failures.jsonl").read_text().splitlines()] == \
           [str(bare / f"clip{i}.mp4") for i in range(3)]


def test_cli_flags_bind_to_the_config_and_media_lives_in_media_config(tmp_path):
    res = cli("precompute", "videos", "--input", tmp_path, "--out", tmp_path / "o", "--fps", 2, "--max-frames", 8,
              "--print-config")
    import yaml

    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    assert cfg["media"] == {"fps": 2.0, "max_frames": 8, "image_size": 224, "image_frames": 8}
    assert "fps" not in cfg and "max_frames" not in cfg  # one place for the media policy
    file = tmp_path / "c.yaml"
    file.write_text("media: {image_size: 64}\nshard_size: 7\n")
    cfg = yaml.safe_load(cli("precompute", "videos", "-c", file, "--shard-size", 9, "--set", "prompt=Hi",
                             "--print-config").stdout)
    assert cfg["media"]["image_size"] == 64 and cfg["shard_size"] == 9 and cfg["extra"] == {"prompt": "Hi"}


def test_a_failed_decode_names_the_url_not_the_temporary_download(tmp_path, http_server):
    http_server.files["/junk.mp4"] = b"this is not a video at all" * 20
    (tmp_path / "m.csv").write_text("videoid,contentUrl,duration,page_dir,name\n"
                                    f"j,{http_server.url}/junk.mp4,PT2S,p,junk\n")
    with pytest.raises(DataError, match="all 1 inputs failed"):
        run_precompute("webvid", str(tmp_path / "m.csv"), tmp_path / "out", workers=0, progress=False,
                       opts=SourceOptions(**OPTS))
    row = json.loads((tmp_path / "out" / "failures.jsonl").read_text())
    assert row["input"] == f"{http_server.url}/junk.mp4"
    assert row["reason"].startswith(f"{http_server.url}/junk.mp4: ") and "downloads" not in row["reason"]


@pytest.mark.parametrize("args,message", [
    (["nope"], "unknown source 'nope'; valid sources: webvid"),
    (["videos", "--input", "/no/such/dir"], "input not found"),
    (["videos", "--input", ".", "--part", "3/2"], "--part 3/2"),
    (["webvid", "--part", "1"], "--part expects i/n"),
])
def test_cli_usage_errors(tmp_path, args, message):
    res = cli("precompute", *args, "--out", tmp_path / "out")
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- a worker that dies mid-sample

class Crasher(os.PathLike):
    """Media whose path lookup kills the process: what a decoder segfault looks like to the driver."""

    def __fspath__(self):
        os._exit(7)

    def __str__(self):
        return "crash.mp4"


NAME = "crashy"


def iter_samples(input, opts):  # this module is also a source, for the test below
    chat = [{"role": "user", "content": "?"}, {"role": "assistant", "content": "!"}]
    for i in range(5):
        media = Crasher() if i == 2 else str(Path(input) / f"clip{i:02d}.mp4")
        yield RawSample(id=f"s{i}", source=NAME, kind="caption", messages=chat, media=media)


def test_worker_crash_is_recorded_and_the_run_goes_on(media_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(SOURCES, "crashy", __name__)
    summary = run_precompute("crashy", str(media_dir), tmp_path / "out", workers=1, shard_size=3, progress=False,
                             opts=SourceOptions(**OPTS))
    assert summary["samples"] == 4 and summary["failures"] == 1
    assert sorted(ids_in(tmp_path / "out")) == ["s0", "s1", "s3", "s4"]
    failure = json.loads((tmp_path / "out" / "failures.jsonl").read_text())
    assert failure["id"] == "s2" and "worker process died" in failure["reason"]


def test_a_crash_blames_only_the_sample_of_the_worker_that_died(media_dir, tmp_path, monkeypatch):
    """Two shards in flight; each time one worker dies, the other is on a healthy sample that must not be counted
    as suspect (two such coincidences used to record it as a failure)."""
    from crash_pair_source import SYNC

    monkeypatch.setitem(SOURCES, "crashpair", "crash_pair_source")
    (tmp_path / "sync").mkdir()
    monkeypatch.setenv(SYNC, str(tmp_path / "sync"))
    summary = run_precompute("crashpair", str(media_dir), tmp_path / "out", workers=2, shard_size=3, progress=False,
                             opts=SourceOptions(**OPTS))
    assert (summary["samples"], summary["failures"]) == (5, 1)
    assert sorted(ids_in(tmp_path / "out")) == ["s0", "s1", "s3", "s4", "s5"]
    failure = json.loads((tmp_path / "out" / "failures.jsonl").read_text())
    assert failure["id"] == "s2" and "worker process died" in failure["reason"]


# ---------------------------------------------------------------- kill -9 and resume

def test_kill_and_resume_matches_a_clean_run(media_dir, tmp_path, http_server):
    video = (media_dir / "clip00.mp4").read_bytes()
    rows = ["videoid,contentUrl,duration,page_dir,name"]
    for i in range(24):
        http_server.files[f"/v/{i}.mp4"] = video
        rows.append(f"{1000 + i},{http_server.url}/v/{i}.mp4,PT00H00M03S,dir,caption number {i}")
    (tmp_path / "meta.csv").write_text("\n".join(rows) + "\n")

    clean = tmp_path / "clean"
    run_precompute("webvid", str(tmp_path / "meta.csv"), clean, workers=0, shard_size=2, progress=False,
                   opts=SourceOptions(**OPTS))

    out = tmp_path / "killed"
    args = [sys.executable, "-m", "fvlm_cli", "precompute", "webvid", "--input", tmp_path / "meta.csv",
            "--out", out, "--image-size", "32", "--shard-size", "2", "--workers", "1"]
    for path in http_server.files:
        http_server.delay[path] = 0.12  # ~0.25 s per shard: the kill lands mid-run
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 60
        while len(list(out.glob("*.tar"))) < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, no chance to clean up
        proc.wait()
    finished = len(list(out.glob("*.tar")))
    assert 3 <= finished < 12, "the run should have been killed midway"
    assert not (out / "manifest.json").exists() or not shards.read_manifest(out)["complete"]

    http_server.delay.clear()
    res = cli(*args[3:])
    assert res.returncode == 0, res.stderr
    assert ids_in(out) == ids_in(clean)  # same samples, same order, none twice, none missing
    assert [s["sha256"] for s in shards.read_manifest(out)["shards"]] == \
        [s["sha256"] for s in shards.read_manifest(clean)["shards"]]


# ---------------------------------------------------------------- a full disk is the machine's fault, not an input's


def test_a_full_disk_stops_the_run_blames_no_input_and_resume_finishes(media_dir, tmp_path):
    from fulldisk_source import FULL

    out = tmp_path / "out"
    here = str(Path(__file__).parent)
    code = (f"import sys; sys.path.insert(0, {here!r}); from fvlm_cli.data.sources import SOURCES; "
            "SOURCES['fulldisk'] = 'fulldisk_source'; from fvlm_cli.cli import main; main()")
    args = [sys.executable, "-c", code, "precompute", "fulldisk", "--input", media_dir, "--out", out,
            "--image-size", "32", "--shard-size", "3", "--workers", "1", "--json"]
    full = subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=120,
                          env={**os.environ, FULL: "1"})
    assert full.returncode == 2, full.stderr
    last = full.stderr.strip().splitlines()[-1]
    assert "No space left on device writing /cache/clip04.mp4" in last and "finished work is kept" in last
    assert "Traceback" not in full.stderr and "internal error" not in full.stderr
    records = [json.loads(p.read_text()) for p in (out / ".fvlm-state" / "shards").glob("*.json")]
    assert [(r["samples"], r["failures"]) for r in records] == [(3, [])]  # the finished shard, nobody blamed
    assert not (out / "failures.jsonl").exists() or not (out / "failures.jsonl").read_text().strip()

    again = subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["samples"], summary["failures"], summary["shards_resumed"]) == (6, 0, 1)
    assert sorted(ids_in(out)) == [f"s{i}" for i in range(6)]


def test_storage_error_is_found_through_the_exception_chain():
    import errno

    from fvlm_cli.errors import StorageError, storage_error

    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded", "/data/x.tar")
        except OSError as inner:
            raise RuntimeError("av could not write") from inner
    except RuntimeError as e:
        found = storage_error(e)
    assert isinstance(found, StorageError) and "Disk quota exceeded writing /data/x.tar" in str(found)
    assert storage_error(OSError(errno.ENOENT, "No such file or directory", "x.mp4")) is None  # a bad input
    assert storage_error(ValueError("bad")) is None


def test_sigterm_writes_the_manifest_of_the_finished_shards_and_exits_143(media_dir, tmp_path, http_server):
    """A scheduler's SIGTERM unwinds like Ctrl-C: the finished shards are listed in manifest.json (incomplete), no
    temporary tar is left, the workers go, and the same command finishes the job."""
    video = (media_dir / "clip00.mp4").read_bytes()
    rows = ["videoid,contentUrl,duration,page_dir,name"]
    for i in range(16):
        http_server.files[f"/t/{i}.mp4"] = video
        http_server.delay[f"/t/{i}.mp4"] = 0.15
        rows.append(f"{2000 + i},{http_server.url}/t/{i}.mp4,PT00H00M03S,dir,caption number {i}")
    (tmp_path / "meta.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    args = [sys.executable, "-m", "fvlm_cli", "precompute", "webvid", "--input", tmp_path / "meta.csv",
            "--out", out, "--image-size", "32", "--shard-size", "2", "--workers", "1"]
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while len(list(out.glob("*.tar"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].endswith("terminated") and "Traceback" not in err
    manifest = shards.read_manifest(out)
    assert not manifest["complete"] and 2 <= len(manifest["shards"]) < 8
    assert sorted(s["name"] for s in manifest["shards"]) == sorted(p.name for p in out.glob("*.tar"))
    assert not [p for p in out.rglob("*") if p.name.endswith((".tmp", ".part"))]

    http_server.delay.clear()
    done = cli(*args[3:], "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["shards_resumed"] == len(manifest["shards"])
    assert shards.read_manifest(out)["complete"] and len(ids_in(out)) == 16
