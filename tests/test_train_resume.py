"""Resume as a user meets it: a kill after the last checkpoint, a truncated newest checkpoint, a disk that fills up
during a save. Each resume test proves the resumed process started after the checkpoint step."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shard_factory import WHOLE_MODEL, WHOLE_MODEL_FLAGS, make_samples, write_shards

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    write_shards(d / "train", make_samples(n_video=24, size=64), per_shard=3)
    return d


def _args(shards, out, steps, *extra, whole=True):
    return [sys.executable, "-m", "fvlm_cli", "train", "-c", str(ROOT / "configs/train/tiny-stage1.yaml"),
            *(WHOLE_MODEL_FLAGS if whole else []),
            "--set", f"data.train=[{{path: {shards}/train}}]", "--set", "data.text=[]", "--set", "data.val=null",
            "--set", "data.batch_size=2", "--set", "data.num_workers=1", "--set", "train.log_every=1",
            "--set", "train.eval_every=0", "--steps", str(steps), "--out", str(out), *extra]


def _rows(run) -> list:
    """metrics.jsonl rows; a line the kill cut short is None."""
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append(None)
    return out


def _metric_steps(run):
    return [r["step"] for r in _rows(run) if r is not None and "loss" in r]


def first_logged_step(stderr: str, total: int) -> int:
    """The first `step N/total` console line of a process: where it really started."""
    m = re.search(rf"^step (\d+)/{total}\b", stderr, re.M)
    assert m, stderr[-2000:]
    return int(m.group(1))


def _kill_after(p, run: Path, step: int, timeout: float = 300) -> None:
    """SIGKILL `p` once metrics.jsonl holds `step` (so rows after the last checkpoint exist)."""
    deadline = time.time() + timeout
    while True:
        assert p.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        if (run / "metrics.jsonl").exists() and step in _metric_steps(run):
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()


@pytest.mark.slow
def test_kill_truncated_latest_resume_from_older_and_metrics_once(shards, tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen(_args(shards, run, 7, "--set", "train.save_every=2"), env=ENV, cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_after(p, run, 5)
    ck = run / "checkpoints"
    newest = int(os.readlink(ck / "latest").removeprefix("step-"))
    assert newest in (4, 6) and 5 in _metric_steps(run)  # a step-6 save can finish before the kill lands
    older = newest - 2
    weights = ck / f"step-{newest:06d}" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])  # a truncated newest checkpoint
    # rows logged after the older checkpoint (under load the kill may land a step late, or cut a line)
    after = sum(1 for r in _rows(run) if r is None or r.get("step", 0) > older)
    r = subprocess.run(_args(shards, run, 7, "--set", "train.save_every=2", "--resume"), env=ENV, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"checkpoint step-{newest:06d} is unreadable" in r.stderr and f"resuming from step-{older:06d}" in r.stderr
    assert f"resumed from step {older} (step-{older:06d})" in r.stderr
    assert f"dropped {after} metrics.jsonl row(s)" in r.stderr
    assert first_logged_step(r.stderr, 7) == older + 1  # the resumed process started after the checkpoint, not at 1
    assert _metric_steps(run) == list(range(1, 8))  # each step once
    assert "Traceback" not in r.stderr


def test_disk_full_during_a_save_is_a_user_error(shards, tmp_path, monkeypatch):
    import torch

    from fvlm_cli.errors import TrainingError
    from fvlm_cli.train import checkpoint
    from fvlm_cli.train.loop import load_run_config, train

    real_save = torch.save

    def writer(obj, f, *a, **kw):  # the trainer state of step 4 hits a full disk
        if isinstance(obj, dict) and obj.get("step") == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(checkpoint.torch, "save", writer)
    run = tmp_path / "full"
    cfg = load_run_config(str(ROOT / "configs/train/tiny-stage1.yaml"), [
        *WHOLE_MODEL,
        f"data.train=[{{path: {shards}/train}}]", "data.text=[]", "data.val=null", "data.batch_size=2",
        "data.num_workers=0", "train.steps=6", "train.save_every=2", "train.eval_every=0", f"out_dir={run}"])
    with pytest.raises(TrainingError) as err:
        train(cfg, quiet=True)
    msg = str(err.value)
    assert "could not write checkpoint step-000004" in msg and "the disk is full" in msg
    assert "removed the partial .step-000004.tmp" in msg and "the last good checkpoint is step-000002" in msg
    ck = run / "checkpoints"
    assert not list(ck.glob(".step-*")) and os.readlink(ck / "latest") == "step-000002"
    # a torch writer that reports the short write as a RuntimeError (what a full disk really gives) is the same
    monkeypatch.setattr(checkpoint.torch, "save", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 193536 vs 193424")))
    with pytest.raises(TrainingError, match=r"could not write checkpoint step-000008 .*RuntimeError: .*unexpected pos"):
        _save_with(checkpoint, run, cfg)
    assert not list(ck.glob(".step-*"))


def _save_with(checkpoint, run, cfg):
    import torch

    from fvlm_cli.model.build import build_model
    from fvlm_cli.model.tokenizer import load_tokenizer

    torch.manual_seed(0)
    checkpoint.save(run, 8, build_model(cfg.model), load_tokenizer("tiny"), cfg, {}, keep_last=2)


def test_no_readable_checkpoint_is_one_line(shards, tmp_path):
    run = tmp_path / "bad"
    (run / "checkpoints" / "step-000002").mkdir(parents=True)
    (run / "checkpoints" / "step-000002" / "model.safetensors").write_bytes(b"junk")
    (run / "checkpoints" / "latest").symlink_to("step-000002")
    r = subprocess.run(_args(shards, run, 4, "--resume"), env=ENV, cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "no readable checkpoint" in r.stderr and "step-000002" in r.stderr
    assert "Traceback" not in r.stderr


def _losses(run) -> dict:
    return {r["step"]: r["loss"] for r in _rows(run) if r is not None and "loss" in r}


def test_resume_with_other_frozen_groups_is_one_line(shards, tmp_path):
    """A checkpoint saved with DINO and the connector training, resumed under the shipped stage 1 (both frozen): the
    optimizer has other groups. One line that says why, no traceback."""
    run = tmp_path / "run"
    r = subprocess.run(_args(shards, run, 2, "--set", "train.save_every=2"), env=ENV, cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run(_args(shards, run, 4, "--resume", whole=False), env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "cannot resume from" in r.stderr and "optim.*.frozen" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_sigterm_saves_a_checkpoint_and_resume_continues_exactly(shards, tmp_path):
    """A scheduler's preemption signals the whole process group (loader workers too): training finishes its step,
    saves, exits 143; `--resume` then gives the same losses as a run that was never stopped."""
    steps = 12
    clean = tmp_path / "clean"
    r = subprocess.run(_args(shards, clean, steps, "--set", "train.save_every=0"), env=ENV, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    run = tmp_path / "run"
    p = subprocess.Popen(_args(shards, run, steps, "--set", "train.save_every=0"), env=ENV, cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while not ((run / "metrics.jsonl").exists() and 3 in _metric_steps(run)):
        assert p.poll() is None and time.time() < deadline, "the run ended before it could be stopped"
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 143, err[-3000:]
    m = re.search(r"stopped by signal SIGTERM after step (\d+): saved checkpoint step-(\d+)", err)
    assert m and m.group(1) == str(int(m.group(2))), err[-3000:]
    stopped = int(m.group(1))
    assert 3 <= stopped < steps and err.strip().splitlines()[-1].endswith("terminated") and "Traceback" not in err
    assert os.readlink(run / "checkpoints" / "latest") == f"step-{stopped:06d}"

    r = subprocess.run(_args(shards, run, steps, "--set", "train.save_every=0", "--resume"), env=ENV, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert first_logged_step(r.stderr, steps) == stopped + 1
    assert _metric_steps(run) == list(range(1, steps + 1))
    assert _losses(run) == _losses(clean)
