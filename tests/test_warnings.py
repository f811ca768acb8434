"""Clean output: no FutureWarning/DeprecationWarning from fvlm's own calls; internal errors met along the way are
one-line user errors."""

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from media_factory import write_video

ROOT = Path(__file__).resolve().parent.parent
NOISE = re.compile(r"FutureWarning|DeprecationWarning|deprecated", re.I)


def fvlm(*args, **env):
    # PYTHONWARNINGS=always: every warning is printed, even those Python hides by default
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "always", **env}
    return subprocess.run([sys.executable, "-m", "fvlm_cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("w") / "clip.mp4", seconds=2, fps=8, size=(64, 48))


def test_caption_prints_no_future_or_deprecation_warning(clip):
    for mode in ("coarse_fine", "autoregressive"):
        r = fvlm("caption", str(clip), "--model", "tiny", "--mode", mode, "--max-new-tokens", "3")
        assert r.returncode == 0, r.stderr
        assert not NOISE.search(r.stderr + r.stdout), r.stderr


def test_bench_prints_no_future_or_deprecation_warning(tmp_path):
    from shard_factory import write_shards
    from test_bench import mcq_samples

    write_shards(tmp_path / "mcq", mcq_samples(4), per_shard=2)
    r = fvlm("bench", "synthetic", "--model", "tiny", "--data", str(tmp_path / "mcq"), "--out", str(tmp_path / "o"),
             "--limit", "2", "--mode", "all", "--method", "both", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert not NOISE.search(r.stderr + r.stdout), r.stderr


def test_generation_raises_no_warning_in_process(clip):
    from fvlm_cli import generate, load_model

    torch.set_num_threads(1)
    lm = load_model("tiny", device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for mode in ("coarse_only", "coarse_fine", "autoregressive"):
            generate(lm, [str(clip)], "What moves?", mode=mode, max_new_tokens=3)
    bad = [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert not bad, [f"{w.filename}:{w.lineno}: {w.message}" for w in bad]


@pytest.mark.parametrize("config, needle", [("", "config file"), (".", "is a directory")])
def test_empty_or_directory_config_is_a_user_error(config, needle):
    r = fvlm("train", "--config", config)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "internal error" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
