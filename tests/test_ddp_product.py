"""DDP through the product: `fvlm train --gpus 2` (torchrun, 2 CPU ranks, gloo) against `fvlm train` on one rank.

- 2 ranks x 1 worker, batch 2 == 1 rank x 2 workers, batch 2, grad_accum 2 (the same global batch and, by the
  loader's reader numbering, the same samples): equal final weights (1e-5), and each step's samples are the
  same; the two ranks read disjoint samples.
- kill -9 during the 2-rank run, `--resume` at world size 2: the same weights and losses as the straight run,
  and the resumed process starts after the checkpoint step.
- the killed run resumed on 1 rank: the log says the resume is elastic, and it reads none of the samples the
  checkpoint had consumed.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from shard_factory import WHOLE_MODEL_FLAGS, make_samples, write_shards

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "FVLM_BACKEND": "gloo"}
STEPS = 4
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp-shards")
    write_shards(d / "train", make_samples(n_video=24, n_image=4, size=64), per_shard=3)
    return d


def _cmd(shards, out, *extra, workers=1, accum=1, save_every=2):
    return [sys.executable, "-m", "fvlm_cli", "train", "-c", str(ROOT / "configs/train/tiny-stage1.yaml"),
            *WHOLE_MODEL_FLAGS,
            "--set", f"data.train=[{{path: {shards}/train}}]", "--set", "data.text=[]", "--set", "data.val=null",
            "--set", "data.batch_size=2", "--set", f"data.num_workers={workers}", "--set", f"train.grad_accum={accum}",
            "--set", "train.log_every=1", "--set", "train.eval_every=0", "--set", f"train.save_every={save_every}",
            "--device", "cpu", "--steps", str(STEPS), "--out", str(out), *extra]


def _run(cmd, trace, **kw):
    r = subprocess.run(cmd, env={**ENV, "FVLM_DATA_TRACE": str(trace)}, cwd=ROOT, capture_output=True, text=True,
                       timeout=600, **kw)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _weights(run):
    from safetensors.torch import load_file

    return load_file(str((run / "checkpoints" / "latest").resolve() / "model.safetensors"))


def _trace(trace: Path, rank: int) -> list[list[str]]:
    return [r["ids"] for r in map(json.loads, (trace / f"rank{rank}.jsonl").read_text().splitlines())]


def _losses(run):
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


def _first_step(stderr: str) -> int:
    m = re.search(rf"^(?:\[\S+\]:?\s*)?step (\d+)/{STEPS}\b", stderr, re.M)
    assert m, stderr[-2000:]
    return int(m.group(1))


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


@pytest.fixture(scope="module")
def runs(shards, tmp_path_factory):
    t = tmp_path_factory.mktemp("ddp-runs")
    _run(_cmd(shards, t / "one", workers=2, accum=2), t / "trace-one")
    _run(_cmd(shards, t / "two", "--gpus", "2"), t / "trace-two")
    # the same 2-rank run, killed once its step-2 checkpoint exists and step 3 was logged
    killed = t / "killed"
    p = subprocess.Popen(_cmd(shards, killed, "--gpus", "2"), env={**ENV, "FVLM_DATA_TRACE": str(t / "trace-killed")},
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    while not ((killed / "metrics.jsonl").exists() and 3 in _losses(killed)):
        assert p.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    for pid in [p.pid, *_descendants(p.pid)]:  # torchrun and both ranks (they run in sessions of their own)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait()
    time.sleep(0.5)
    assert os.readlink(killed / "checkpoints" / "latest") == "step-000002"
    shutil.copytree(killed, t / "elastic", symlinks=True)
    return t


def test_two_ranks_equal_one_rank_with_the_same_global_batch(runs):
    a, b = _weights(runs / "one"), _weights(runs / "two")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)
    one = _trace(runs / "trace-one", 0)
    r0, r1 = _trace(runs / "trace-two", 0), _trace(runs / "trace-two", 1)
    assert len(one) == 2 * STEPS and len(r0) == len(r1) == STEPS
    ids0, ids1 = {i for b in r0 for i in b}, {i for b in r1 for i in b}
    assert not ids0 & ids1 and len(ids0) == len(ids1) == 2 * STEPS  # disjoint, no repeats within the epoch
    for s in range(STEPS):  # step s: the 1-rank run's two micro-batches are the two ranks' batches
        assert one[2 * s] == r0[s] and one[2 * s + 1] == r1[s]
    assert _losses(runs / "one") == pytest.approx(_losses(runs / "two"), rel=1e-5)


def test_kill_and_resume_at_world_size_two_is_exact(runs, shards):
    killed = runs / "killed"
    r = _run(_cmd(shards, killed, "--gpus", "2", "--resume"), runs / "trace-resumed")
    assert "resumed from step 2 (step-000002)" in r.stderr and "elastic" not in r.stderr
    assert _first_step(r.stderr) == 3  # started after the checkpoint step (a restart from 0 logs step 1)
    a, b = _weights(runs / "two"), _weights(killed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    assert sorted(_losses(killed)) == list(range(1, STEPS + 1))  # each step once in metrics.jsonl
    assert _losses(killed) == pytest.approx(_losses(runs / "two"), rel=1e-5, abs=1e-6)
    for rank in range(2):  # the resumed ranks read exactly what the straight run read at steps 3-4
        assert _trace(runs / "trace-resumed", rank) == _trace(runs / "trace-two", rank)[2:]


def test_resume_on_one_rank_is_elastic_and_reads_no_consumed_sample(runs, shards):
    run = runs / "elastic"
    r = _run(_cmd(shards, run, "--resume"), runs / "trace-elastic")
    assert "resumed from step 2" in r.stderr
    assert "elastic data resume from 2 rank(s) x 1 worker(s) to 1 rank(s) x 1 worker(s)" in r.stderr
    assert "sample(s) of epoch 0 left" in r.stderr
    assert _first_step(r.stderr) == 3
    consumed = {i for rank in range(2) for b in _trace(runs / "trace-killed", rank)[:2] for i in b}
    after = [i for b in _trace(runs / "trace-elastic", 0) for i in b]
    assert len(consumed) == 8 and len(after) == 4 and len(set(after)) == 4 and not consumed & set(after)
    assert sorted(_losses(run)) == list(range(1, STEPS + 1))


def test_sigterm_to_the_launcher_saves_on_both_ranks_and_resume_continues(shards, tmp_path):
    """`fvlm train --gpus 2` passes a scheduler's SIGTERM to torchrun, which hands it to the ranks: they agree on a
    step, save one checkpoint and stop (exit 143), leaving no process behind; `--resume` continues from there."""
    run, steps = tmp_path / "run", 10
    cmd = _cmd(shards, run, "--gpus", "2", save_every=0)
    cmd[cmd.index("--steps") + 1] = str(steps)
    p = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 400
    while not ((run / "metrics.jsonl").exists() and 3 in _losses(run)):
        assert p.poll() is None and time.time() < deadline, "the run ended before it could be stopped"
        time.sleep(0.05)
    ranks = _descendants(p.pid)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 143, err[-3000:]
    m = re.search(r"stopped by signal SIGTERM after step (\d+): saved checkpoint step-(\d+)", err)
    assert m, err[-3000:]
    stopped = int(m.group(1))
    assert 3 <= stopped < steps and os.readlink(run / "checkpoints" / "latest") == f"step-{stopped:06d}"
    time.sleep(0.5)
    assert not [pid for pid in ranks if Path(f"/proc/{pid}").exists()]  # torchrun and the ranks are gone

    r = _run([*cmd, "--resume"], tmp_path / "trace")
    assert re.search(rf"^(?:\[\S+\]:?\s*)?step (\d+)/{steps}\b", r.stderr, re.M).group(1) == str(stopped + 1)
    assert sorted(_losses(run)) == list(range(1, steps + 1))
