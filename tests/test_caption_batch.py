"""`fvlm caption` isolates bad inputs: one error line/record each, every other input captioned, exit 2 at the end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from media_factory import write_image, write_video

from fvlm_cli.infer import captioner
from fvlm_cli.infer.inputs import Item
from fvlm_cli.infer.settings import CaptionConfig, GenerateConfig
from fvlm_cli.model.build import load_model

ROOT = Path(__file__).resolve().parent.parent
TIMING = ("seconds", "first_token_s")


def fvlm(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fvlm_cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixed")
    bad = d / "broken.mp4"
    bad.write_bytes(b"this is not a video")
    empty = d / "empty.png"
    empty.write_bytes(b"")
    return {"clip": write_video(d / "clip.mp4", seconds=3, fps=8, size=(96, 64)),
            "long": write_video(d / "long.mp4", seconds=5, fps=8, size=(96, 64)),
            "photo": write_image(d / "photo.png", (80, 60)), "bad": bad, "empty": empty, "missing": d / "missing.mp4"}


@pytest.fixture(scope="module")
def lm():
    torch.set_num_threads(1)
    return load_model("tiny", device="cpu")


def strip(rec):
    return {k: v for k, v in rec.items() if k not in TIMING}


def test_cli_mixed_batch_keeps_every_good_caption(media):
    order = ["clip", "bad", "missing", "photo", "empty"]
    r = fvlm("caption", *[str(media[k]) for k in order], "--model", "tiny", "--mode", "coarse_only", "--json",
             "--max-new-tokens", "4", "--batch-size", "4")
    assert r.returncode == 2, r.stderr
    recs = {x["input"]: x for x in map(json.loads, r.stdout.splitlines())}
    assert set(recs) == {str(media[k]) for k in order}
    for k in ("clip", "photo"):
        rec = recs[str(media[k])]
        assert isinstance(rec["text"], str) and rec["frames"] in (3, 8) and "error" not in rec
    for k in ("bad", "missing", "empty"):
        assert set(recs[str(media[k])]) == {"input", "error"}
    assert "not found" in recs[str(media["missing"])]["error"]
    assert "empty" in recs[str(media["empty"])]["error"]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 3 and "Traceback" not in r.stderr
    assert all(any(str(media[k]) in line for line in lines) for k in ("bad", "missing", "empty"))
    assert "--json" in fvlm("caption", "--help").stdout and "Exit status" in fvlm("caption", "--help").stdout


def test_a_generation_failure_costs_only_that_input(lm, media, monkeypatch):
    real = captioner.generate_clips

    def flaky(lm_, clips, prompts, **kw):  # the 5 s video (5 frames) breaks any batch it is in
        if any(c.shape[0] == 5 for c in clips):
            raise RuntimeError("out of memory (simulated)")
        return real(lm_, clips, prompts, **kw)

    monkeypatch.setattr(captioner, "generate_clips", flaky)
    units = [Item(str(media[k]), str(media[k])) for k in ("clip", "long", "photo")]
    recs = []
    cfg = CaptionConfig(GenerateConfig(mode="coarse_only", max_new_tokens=3), batch_size=8, workers=0)
    s = captioner.caption_units(lm, units, cfg, recs.append)
    assert [r["input"] for r in recs] == [u.input for u in units]
    assert recs[1]["error"].startswith("generation failed: RuntimeError: out of memory")
    assert "text" in recs[0] and "text" in recs[2]
    assert (s.captioned, s.failed) == (2, 1)


def test_workers_and_batch_size_do_not_change_results(lm, media):
    units = [Item(str(media[k]), str(media[k])) for k in ("clip", "bad", "long", "photo", "clip")]
    runs = []
    for workers, bs in ((0, 1), (2, 3)):
        recs = []
        cfg = CaptionConfig(GenerateConfig(mode="coarse_fine", max_new_tokens=4), batch_size=bs, workers=workers)
        captioner.caption_units(lm, units, cfg, recs.append)
        runs.append([strip(r) for r in recs])
    assert runs[0] == runs[1]  # same records, in input order, whatever the decoding and batching
    assert [r["input"] for r in runs[0]] == [u.input for u in units]
    assert "error" in runs[0][1] and runs[0][3]["frames"] == lm.media.image_frames


def test_decoding_happens_in_background_workers(lm, media, tmp_path, monkeypatch):
    real = captioner.load_clip

    def spy(path, *a, **kw):
        (tmp_path / f"{os.getpid()}-{Path(path).name}").touch()
        return real(path, *a, **kw)

    monkeypatch.setattr(captioner, "load_clip", spy)
    units = [Item(str(media[k]), str(media[k])) for k in ("clip", "long", "photo", "clip")]
    recs = []
    s = captioner.caption_units(lm, units, CaptionConfig(GenerateConfig(max_new_tokens=2), workers=2), recs.append)
    pids = {int(p.name.split("-")[0]) for p in tmp_path.iterdir()}
    assert len(recs) == 4 and s.captioned == 4
    assert os.getpid() not in pids and len(pids) == 2  # two decoding processes, none of them the model's
