"""Dataset-scale `fvlm caption`: folders, JSONL/CSV/TXT lists and shard sets; --out append + resume; --gpus N."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from media_factory import write_image, write_video
from shard_factory import make_samples, write_shards

from fvlm_cli.infer.inputs import ShardUnit, resolve

ROOT = Path(__file__).resolve().parent.parent


def fvlm(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fvlm_cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=300)


def rows(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """data/a.mp4, data/x/b.png, data/x/y/c.mp4, data/x/broken.mp4, data/notes.txt, data/.hidden/d.mp4"""
    d = tmp_path_factory.mktemp("tree") / "data"
    (d / "x" / "y").mkdir(parents=True)
    (d / ".hidden").mkdir()
    write_video(d / "a.mp4", seconds=2, fps=8, size=(64, 48))
    write_image(d / "x" / "b.png", (40, 30))
    write_video(d / "x" / "y" / "c.mp4", seconds=3, fps=8, size=(64, 48))
    write_video(d / ".hidden" / "d.mp4", seconds=1, fps=8, size=(64, 48))
    (d / "x" / "broken.mp4").write_bytes(b"garbage")
    (d / "notes.txt").write_text("not media\n")
    return d


def test_resolve_folder_is_recursive_sorted_and_skips_hidden_and_non_media(tree):
    found = resolve([str(tree)])
    assert [Path(u.path).relative_to(tree).as_posix() for u in found.units] == [
        "a.mp4", "x/b.png", "x/broken.mp4", "x/y/c.mp4"]
    assert found.errors == [] and found.known_total == 4


def test_resolve_lists(tree, tmp_path):
    jl = tmp_path / "list.jsonl"
    jl.write_text("\n".join([
        json.dumps({"video": str(tree / "a.mp4"), "id": "v1", "prompt": "What moves?"}),
        "{not json",
        json.dumps({"caption": "no path here"}),
        json.dumps({"path": "gone.mp4"}),
        "",
    ]))
    (tmp_path / "rel").mkdir()
    (tmp_path / "rel" / "b.png").write_bytes((tree / "x" / "b.png").read_bytes())
    csv = tmp_path / "list.csv"
    csv.write_text("id,path,question\nc1,rel/b.png,Which colour?\n")
    txt = tmp_path / "list.txt"
    txt.write_text(f"# one path per line\n{tree / 'x' / 'y' / 'c.mp4'}\n")
    found = resolve([str(jl), str(csv), str(txt)])
    a, b, c = found.units
    assert (a.input, a.prompt, a.extra) == (str(tree / "a.mp4"), "What moves?", {"id": "v1"})
    assert (b.path, b.prompt, b.extra) == (str(tmp_path / "rel" / "b.png"), "Which colour?", {"id": "c1"})
    assert c.path == str(tree / "x" / "y" / "c.mp4") and c.prompt is None
    errs = {e["input"]: e["error"] for e in found.errors}
    assert "not a JSON object" in errs[f"{jl}:2"] and "no media path" in errs[f"{jl}:3"]
    assert errs["gone.mp4"] == "media file not found"


def test_resolve_shard_sets(tmp_path):
    write_shards(tmp_path / "set", make_samples(n_video=3, n_image=1, n_text=2, size=32), per_shard=4)
    found = resolve([str(tmp_path / "set"), str(tmp_path / "set" / "shard-000001.tar")])
    assert [type(u) for u in found.units] == [ShardUnit, ShardUnit, ShardUnit]
    assert [u.samples for u in found.units[:2]] == [4, 2] and found.known_total is None


def test_folder_out_resume(tree, tmp_path):
    out = tmp_path / "caps.jsonl"
    r = fvlm("caption", str(tree), "--model", "tiny", "--out", str(out), "--max-new-tokens", "3", "--workers", "1")
    assert r.returncode == 2, r.stderr  # broken.mp4 failed, the rest is captioned
    first = rows(out)
    assert sorted(Path(x["input"]).name for x in first) == ["a.mp4", "b.png", "c.mp4"]
    fails = rows(tmp_path / "caps.failures.jsonl")
    assert [Path(x["input"]).name for x in fails] == ["broken.mp4"] and "error" in fails[0]
    assert "captions: 4/4, 1 failed" in r.stderr  # progress: done/total, failed, rate
    assert "captions/s" in r.stderr
    # a kill mid-write leaves a partial last line; one caption is lost with it
    kept = [json.dumps(x) for x in first[:2]]
    out.write_text("\n".join(kept) + "\n" + json.dumps(first[2])[:25])
    (tree / "x" / "broken.mp4").rename(tree / "x" / "broken.bak")
    try:
        r = fvlm("caption", str(tree), "--model", "tiny", "--out", str(out), "--max-new-tokens", "3")
    finally:
        (tree / "x" / "broken.bak").rename(tree / "x" / "broken.mp4")
    assert r.returncode == 0, r.stderr
    assert "1 captioned, 0 failed, 2 already" in r.stderr
    again = [x for x in rows_lenient(out)]
    assert sorted(Path(x["input"]).name for x in again) == ["a.mp4", "b.png", "c.mp4"]  # no duplicates
    assert not (tmp_path / "caps.failures.jsonl").exists()


def rows_lenient(path):
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def test_shard_set_captions_every_media_sample_and_resumes(tmp_path):
    samples = make_samples(n_video=3, n_image=1, n_text=2, size=32)
    write_shards(tmp_path / "set", samples, per_shard=4)
    out = tmp_path / "caps.jsonl"
    r = fvlm("caption", str(tmp_path / "set"), "--model", "tiny", "--out", str(out), "--max-new-tokens", "2", "--json")
    assert r.returncode == 0, r.stderr
    got = rows(out)
    assert sorted(x["id"] for x in got) == sorted(s["id"] for s in samples if s["record"]["frame_count"])
    assert all("#" in x["input"] and x["input"].split("#")[0].endswith(".tar") for x in got)
    frames = {x["id"]: x["frames"] for x in got}
    assert frames["image0003"] == 8 and frames["video0000"] == 2  # an image is replicated to 8 frames
    assert "2 text-only skipped" in r.stderr
    assert [json.loads(x)["input"] for x in r.stdout.splitlines()] == [x["input"] for x in got]
    r = fvlm("caption", str(tmp_path / "set"), "--model", "tiny", "--out", str(out), "--max-new-tokens", "2")
    assert r.returncode == 0 and "0 captioned, 0 failed, 4 already" in r.stderr
    assert len(rows(out)) == 4


@pytest.mark.slow
def test_gpus_2_splits_across_two_processes_with_the_same_captions(tree, tmp_path):
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"caps{n}.jsonl"
        r = fvlm("caption", str(tree), "--model", "tiny", "--mode", "coarse_only", "--out", str(out),
                 "--max-new-tokens", "4", "--gpus", str(n), "--device", "cpu", "--workers", str(n - 1))
        assert r.returncode == 2, r.stderr  # broken.mp4
        assert "3 captioned, 1 failed" in r.stderr
        outs[n] = {x["input"]: (x["text"], x["frames"]) for x in rows(out)}
    assert outs[1] == outs[2] and len(outs[2]) == 3


def test_gpus_without_cuda_is_a_user_error(tree):
    r = fvlm("caption", str(tree / "a.mp4"), "--model", "tiny", "--gpus", "2")
    if "CUDA is not available" not in r.stderr:
        pytest.skip("CUDA present")
    assert r.returncode == 2 and "--device cpu" in r.stderr and "Traceback" not in r.stderr


def test_resume_keys_a_list_row_by_its_id_or_prompt_and_lists_may_carry_a_bom(tree, tmp_path):
    """A list may ask one video several questions: --out resumes by input + id (else prompt), so a run killed
    after the first row still answers the second. A CSV saved by Excel starts with a byte-order mark."""
    from fvlm_cli.infer.inputs import done_key

    lst = tmp_path / "qs.csv"
    lst.write_text("id,path,prompt\nq1,{0},What moves?\nq2,{0},What colour is it?\n".format(tree / "a.mp4"),
                   encoding="utf-8-sig")
    found = resolve([str(lst)])
    assert not found.errors and [u.extra for u in found.units] == [{"id": "q1"}, {"id": "q2"}]
    out = tmp_path / "caps.jsonl"
    first = {"input": str(tree / "a.mp4"), "id": "q1", "prompt": "What moves?", "text": "x"}
    out.write_text(json.dumps(first) + "\n")  # as if killed after the first row
    r = fvlm("caption", str(lst), "--model", "tiny", "--out", str(out), "--max-new-tokens", "3")
    assert r.returncode == 0, r.stderr
    assert [x["id"] for x in rows(out)] == ["q1", "q2"] and "1 already" in r.stderr
    assert done_key("a.mp4", "q1") != done_key("a.mp4", "q2") != done_key("a.mp4")


@pytest.mark.skipif(sys.platform != "linux", reason="undecodable file names are a POSIX bytes-path matter")
def test_a_file_name_that_is_not_utf8_is_captioned_and_resumed(tmp_path):
    """Linux hands such a name over with surrogate escapes: the line is written \\u-escaped rather than stopping the
    run, and a rerun finds it done."""
    d = tmp_path / "media"
    d.mkdir()
    src = write_video(d / "plain.mp4", seconds=1, fps=8, size=(64, 48))
    odd = os.fsdecode(bytes(d) + b"/caf\xe9.mp4")
    os.rename(src, odd)
    out = tmp_path / "caps.jsonl"
    r = fvlm("caption", str(d), "--model", "tiny", "--out", str(out), "--max-new-tokens", "2")
    assert r.returncode == 0, r.stderr
    (rec,) = rows(out)
    assert rec["input"] == odd and "\\udce9" in out.read_text()
    again = fvlm("caption", str(d), "--model", "tiny", "--out", str(out), "--max-new-tokens", "2")
    assert again.returncode == 0 and "1 already" in again.stderr and len(rows(out)) == 1


def test_stdout_is_one_line_per_input(tree, monkeypatch, capsys):
    """Without --out a caption is printed on its input's line, whatever whitespace the model put in it."""
    from typer.testing import CliRunner

    from fvlm_cli.cli import app
    from fvlm_cli.infer import captioner

    real = captioner._records

    def multiline(lm, batch, g):
        return [dict(r, text="A red\ncircle\tmoves.") if "text" in r else r for r in real(lm, batch, g)]

    monkeypatch.setattr(captioner, "_records", multiline)
    r = CliRunner().invoke(app, ["caption", str(tree / "a.mp4"), "--model", "tiny", "--max-new-tokens", "2"])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [f"{tree / 'a.mp4'}\tA red circle moves."]


def test_a_full_disk_stops_the_run_and_blames_no_input(tree, tmp_path, monkeypatch):
    """ENOSPC while an input is read (a download or an archive member extracted to a full cache) is not that
    input's error record: the run stops with the storage error and keeps the captions written before it."""
    import errno

    from typer.testing import CliRunner

    from fvlm_cli.cli import app
    from fvlm_cli.errors import StorageError
    from fvlm_cli.infer import captioner

    real = captioner.load_clip

    def load(path, *a, **kw):
        if Path(path).name == "c.mp4":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/cache/c.mp4")
        return real(path, *a, **kw)

    monkeypatch.setattr(captioner, "load_clip", load)
    out = tmp_path / "caps.jsonl"
    r = CliRunner().invoke(app, ["caption", str(tree), "--model", "tiny", "--out", str(out), "--max-new-tokens", "2",
                                 "--workers", "0", "--batch-size", "1"])
    assert isinstance(r.exception, StorageError), r.output
    assert "No space left on device writing /cache/c.mp4" in str(r.exception)
    assert "c.mp4" not in {Path(x["input"]).name for x in rows(out)}
    failed = tmp_path / "caps.failures.jsonl"
    assert "c.mp4" not in {Path(x["input"]).name for x in (rows(failed) if failed.exists() else [])}


needs_fork = pytest.mark.skipif(__import__("multiprocessing").get_start_method() != "fork",
                                reason="the monkeypatched decoder reaches DataLoader workers only when they fork")


def _caption_with_bad_decoder(tree, tmp_path, monkeypatch, bad, *flags):
    from typer.testing import CliRunner

    from fvlm_cli.cli import app
    from fvlm_cli.infer import captioner

    real = captioner.load_clip
    calls = tmp_path / "calls"

    def load(path, *a, **kw):
        if Path(path).name == "c.mp4":
            with open(calls, "a") as f:
                f.write("c\n")
            bad()
        return real(path, *a, **kw)

    monkeypatch.setattr(captioner, "load_clip", load)
    out = tmp_path / "caps.jsonl"
    r = CliRunner().invoke(app, ["caption", str(tree), "--model", "tiny", "--out", str(out), "--max-new-tokens", "2",
                                 "--workers", "2", "--batch-size", "2", *flags])
    return r, out, calls.read_text().count("c")


@needs_fork
def test_a_decoder_that_kills_its_worker_costs_only_that_input(tree, tmp_path, monkeypatch):
    """A segfault in FFmpeg looks like this to the DataLoader: the worker process is gone."""
    r, out, tries = _caption_with_bad_decoder(tree, tmp_path, monkeypatch, lambda: os._exit(11))
    assert r.exit_code == 2, r.output
    assert sorted(Path(x["input"]).name for x in rows(out)) == ["a.mp4", "b.png"]  # every other input captioned
    fails = {Path(x["input"]).name: x["error"] for x in rows(tmp_path / "caps.failures.jsonl")}
    assert set(fails) == {"broken.mp4", "c.mp4"} and fails["c.mp4"] == "its decoder process died on it (twice)"
    assert tries == 2


@needs_fork
def test_a_decoder_that_hangs_is_timed_out_and_costs_only_that_input(tree, tmp_path, monkeypatch):
    import time

    r, out, tries = _caption_with_bad_decoder(tree, tmp_path, monkeypatch, lambda: time.sleep(600),
                                              "--decode-timeout", "4")
    assert r.exit_code == 2, r.output
    assert sorted(Path(x["input"]).name for x in rows(out)) == ["a.mp4", "b.png"]
    fails = {Path(x["input"]).name: x["error"] for x in rows(tmp_path / "caps.failures.jsonl")}
    assert fails["c.mp4"] == "decoding took longer than --decode-timeout 4 s (twice)"
    assert tries == 2


@needs_fork
def test_a_shard_sample_that_kills_its_worker_costs_only_that_sample(tmp_path, monkeypatch):
    """Inside a shard the suspect is the sample, not the shard: the rest of the tar is still captioned, and the
    samples captioned before the crash are not captioned again."""
    from shard_factory import frame_code
    from typer.testing import CliRunner

    from fvlm_cli.cli import app
    from fvlm_cli.infer import captioner

    samples = make_samples(n_video=6, size=32)
    write_shards(tmp_path / "set", samples, per_shard=3)
    real = captioner.clip_tensor

    def decode(frames, *a, **kw):
        if frame_code(frames[0])[1] == 1:  # sample 1 of the first shard
            os._exit(11)
        return real(frames, *a, **kw)

    monkeypatch.setattr(captioner, "clip_tensor", decode)
    out = tmp_path / "caps.jsonl"
    r = CliRunner().invoke(app, ["caption", str(tmp_path / "set"), "--model", "tiny", "--out", str(out),
                                 "--max-new-tokens", "2", "--workers", "2", "--batch-size", "1"])
    assert r.exit_code == 2, r.output
    got = [x["id"] for x in rows(out)]
    assert sorted(got) == sorted(s["id"] for s in samples if s["id"] != "video0001") and len(set(got)) == len(got)
    fails = rows(tmp_path / "caps.failures.jsonl")
    assert [(x["id"], x["error"]) for x in fails] == [("video0001", "its decoder process died on it (twice)")]
    assert "#" in fails[0]["input"]
