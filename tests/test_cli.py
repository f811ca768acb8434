"""The command line: fast help without torch, captions offline, one-line errors with exit 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from media_factory import write_image, write_video

ROOT = Path(__file__).resolve().parent.parent


def fvlm(*args, **kw):
    return subprocess.run([sys.executable, "-m", "fvlm_cli", *args], cwd=kw.pop("cwd", ROOT), capture_output=True,
                          text=True, **kw)


def test_help_lists_every_command_and_does_not_import_torch():
    code = ("import sys, fvlm_cli.cli as c; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(c.app, ['--help']); print(r.output); "
            "print('TORCH' if 'torch' in sys.modules else 'NOTORCH')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    for name in ("precompute", "train", "dpo", "bench", "caption", "compare-modes", "upload", "speedrun", "config", "profile"):
        assert name in r.stdout
    assert r.stdout.strip().endswith("NOTORCH")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    return write_video(d / "clip.mp4", seconds=4, fps=10, size=(96, 72)), write_image(d / "photo.png", (80, 60))


@pytest.mark.parametrize("mode", ["coarse_only", "coarse_fine", "autoregressive"])
def test_caption_video_and_image_offline(media, mode):
    clip, photo = media
    r = fvlm("caption", str(clip), str(photo), "--model", "tiny", "--mode", mode, "--max-new-tokens", "4", "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["input"] for x in lines] == [str(clip), str(photo)]
    assert lines[0]["frames"] == 4 and lines[1]["frames"] == 8  # 1 fps; image replicated to 8 frames
    assert all(x["mode"] == mode and isinstance(x["text"], str) for x in lines)


def test_caption_plain_output(media):
    clip, _ = media
    r = fvlm("caption", str(clip), "--model", "tiny", "--max-new-tokens", "3")
    assert r.returncode == 0 and r.stdout.startswith(str(clip) + "\t")


@pytest.mark.parametrize("args, needle", [
    (["caption", "missing.mp4", "--model", "tiny"], "not found"),
    (["caption", "{clip}", "--model", "tiny", "--mode", "sideways"], "--mode"),
    (["caption", "{bad}", "--model", "tiny"], "bad.mp4:"),
    (["caption", "{clip}", "--model", "no-such-preset"], "not a preset"),
    (["train", "--config", "nope.yaml"], "config file not found"),
    (["train", "-c", "configs/train/tiny-stage1.yaml", "--set", "train.stpes=3"], "did you mean 'train.steps'"),
    (["train", "-c", "configs/train/tiny-stage1.yaml", "--set", "train.steps=many"], "expected an integer"),
    (["caption", "--bogus-flag"], "No such option"),
])
def test_bad_invocations_are_one_line_exit_2(media, tmp_path, args, needle):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    args = [a.format(clip=media[0], bad=bad) for a in args]
    r = fvlm(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_hub_model_unreachable_suggests_tiny(media):
    r = fvlm("caption", str(media[0]), env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2
    assert "--model tiny" in r.stderr and "Traceback" not in r.stderr


def test_debug_shows_traceback():
    r = fvlm("--debug", "caption", "missing.mp4", "--model", "tiny")
    assert r.returncode != 0 and "Traceback" in r.stderr
