"""The offline main job end to end (a scaled-down run): every step, the report, and resume."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_speedrun_small_end_to_end_and_resume(tmp_path):
    out = tmp_path / "sr"
    cmd = [sys.executable, "-m", "fvlm_cli", "speedrun", "--out", str(out), "--steps-scale", "0.04", "--videos", "16",
           "--workers", "1"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", **__import__("os").environ})
    assert r.returncode == 0, r.stderr[-2000:]
    report = (out / "report.md").read_text()
    for part in ("| stage1 |", "| stage2 |", "| dpo |", "| coarse_only |", "| coarse_fine |", "| autoregressive |",
                 "random chance", "## Captions"):
        assert part in report, part
    assert (out / "loss_curves.png").exists() and (out / "accuracy_by_mode.png").exists()
    results = json.loads((out / "bench" / "results.json").read_text())
    assert set(results["benchmarks"]["synthetic"]) >= {"coarse_only", "coarse_fine", "autoregressive"}
    for step in ("data", "stage1", "stage2", "dpo", "bench", "caption"):
        assert (out / ".done" / f"{step}.json").exists()
    # the trained model folder is usable by the other commands
    assert (out / "dpo" / "checkpoints" / "latest" / "model.safetensors").exists()
    t0 = time.perf_counter()
    r2 = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert "stage1:" not in r2.stderr  # finished steps are not redone
    assert time.perf_counter() - t0 < 60
