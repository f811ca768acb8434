"""Training: exact resume after SIGKILL, DDP equivalence, learning direction, DPO metrics, errors."""

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from shard_factory import WHOLE_MODEL, WHOLE_MODEL_FLAGS, make_samples, write_shards

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    write_shards(d / "train", make_samples(n_video=24, n_image=8, size=64), per_shard=4)
    write_shards(d / "text", make_samples(n_text=16, size=64, prefix="t"), per_shard=4)
    write_shards(d / "val", make_samples(n_video=8, size=64, prefix="v", start=100), per_shard=4)
    write_shards(d / "dpo", make_samples(n_video=16, size=64, prefix="d", dpo=True), per_shard=4)
    return d


def _args(shards, out, steps, *extra):
    return [sys.executable, "-m", "fvlm_cli", "train", "-c", str(ROOT / "configs/train/tiny-stage1.yaml"),
            *WHOLE_MODEL_FLAGS,
            "--set", f"data.train=[{{path: {shards}/train}}]", "--set", f"data.text=[{{path: {shards}/text}}]",
            "--set", f"data.val={shards}/val", "--set", "data.val_samples=8", "--set", "data.batch_size=4",
            "--set", "data.num_workers=1", "--set", "train.log_every=1", "--set", "train.eval_every=0",
            "--steps", str(steps), "--out", str(out), *extra]


def _losses(run):
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


def _weights(run):
    from safetensors.torch import load_file

    return load_file(str((run / "checkpoints" / "latest").resolve() / "model.safetensors"))


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(shards, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_args(shards, straight, 8, "--set", "train.save_every=4"), check=True, env=ENV, cwd=ROOT,
                   capture_output=True)
    p = subprocess.Popen(_args(shards, killed, 8, "--set", "train.save_every=2"), env=ENV, cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "step-000004").exists():
        assert p.poll() is None, "run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert (killed / "checkpoints" / "latest").exists()  # the kill never leaves a broken `latest`
    r = subprocess.run(_args(shards, killed, 8, "--set", "train.save_every=2", "--resume"), env=ENV, cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = re.search(r"resumed from step (\d+)", r.stderr)  # it resumed: a restart from step 0 fails here
    assert m and int(m.group(1)) >= 4, r.stderr
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert len(steps) == len(set(steps))  # each logged step once
    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    la, lb = _losses(straight), _losses(killed)
    resumed_from = int(os.readlink(killed / "checkpoints" / "latest").split("-")[1])
    assert resumed_from == 8
    for step in range(5, 9):
        assert la[step] == pytest.approx(lb[step], rel=1e-5, abs=1e-6)


def test_resume_without_checkpoint_and_overwrite_are_errors(shards, tmp_path):
    r = subprocess.run(_args(shards, tmp_path / "none", 2, "--resume"), env=ENV, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "no checkpoint" in r.stderr and "Traceback" not in r.stderr


def test_missing_init_from_is_an_error(shards, tmp_path):
    r = subprocess.run(_args(shards, tmp_path / "x", 2, "--init-from", str(tmp_path / "missing")), env=ENV, cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "init_from" in r.stderr and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_training_lowers_validation_loss(shards, tmp_path):
    from fvlm_cli.train.loop import load_run_config, train

    cfg = load_run_config(str(ROOT / "configs/train/tiny-stage1.yaml"), [
        *WHOLE_MODEL,
        f"data.train=[{{path: {shards}/train}}]", f"data.text=[{{path: {shards}/text}}]", f"data.val={shards}/val",
        "data.val_samples=8", "data.batch_size=4", "data.num_workers=0", "train.steps=25", "train.eval_every=0",
        "train.save_every=0", f"out_dir={tmp_path / 'run'}"])
    summary = train(cfg, quiet=True)
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in recs if r["step"] == 0)["val/loss_coarse_fine"]
    end = summary["val"]["loss_coarse_fine"]
    assert end < start - 1.0, (start, end)
    for key in ("token_shared_coarse", "token_shared_fine"):  # the visual-token collapse diagnostic is logged
        assert 0.0 < summary["val"][key] <= 1.0 + 1e-6, key
    for key in ("lr/connector", "lr/dino", "lr/llm", "grad_norm", "samples_per_s", "frames_per_s", "tokens_per_s", "memory_gb"):
        assert key in recs[1], key
    assert (tmp_path / "run" / "plots" / "loss.png").exists()
    assert (tmp_path / "run" / "config.yaml").exists()
    assert (tmp_path / "run" / "checkpoints" / "best").exists()


def test_dpo_raises_reward_accuracy(shards, tmp_path):
    from fvlm_cli.train.loop import load_run_config, train

    cfg = load_run_config(str(ROOT / "configs/train/tiny-dpo.yaml"), [
        f"data.train=[{{path: {shards}/dpo}}]", "data.batch_size=4", "data.num_workers=0", "train.steps=30",
        "train.init_from=null", "train.log_every=1", f"out_dir={tmp_path / 'dpo'}", "optim.llm.lr=1e-3",
        "optim.connector.lr=1e-3"])
    train(cfg, dpo=True, quiet=True)
    recs = [json.loads(line) for line in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert key in recs[-1]
    assert recs[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)  # policy == reference at the start
    assert sum(r["rewards/accuracies"] for r in recs[-5:]) / 5 > 0.5
    assert recs[-1]["rewards/margins"] > 0


def test_non_finite_losses_stop_with_a_checkpoint(shards, tmp_path):
    out = tmp_path / "nan"
    r = subprocess.run(_args(shards, out, 20, "--set", "optim.llm.lr=1e12", "--set", "optim.connector.lr=1e12",
                             "--set", "optim.grad_clip=0", "--set", "optim.warmup=0", "--set", "train.max_bad_steps=2"),
                       env=ENV, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "non-finite" in r.stderr and "Traceback" not in r.stderr
    assert (out / "checkpoints" / "latest").exists()


@pytest.mark.slow
def test_ddp_two_processes_equal_single_process(tmp_path):
    worker = str(ROOT / "tests" / "ddp_worker.py")
    env = {**ENV, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, worker, str(tmp_path / "single.pt"), "2", "2"], check=True, env=env, cwd=tmp_path)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", worker,
                    str(tmp_path / "ddp.pt"), "2", "2"], check=True, env=env, cwd=tmp_path, capture_output=True)
    a, b = torch.load(tmp_path / "single.pt"), torch.load(tmp_path / "ddp.pt")
    moved = False
    init = __import__("fvlm_cli.model.build", fromlist=["x"])
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)
    torch.manual_seed(0)
    fresh = init.build_model(init.preset("tiny")).state_dict()
    moved = any(not torch.equal(fresh[k], a[k]) for k in a)
    assert moved  # the steps did change the weights


@pytest.mark.slow
def test_real_loop_under_torchrun_two_cpu_processes(shards, tmp_path):
    """`fvlm train --gpus 2` launches torchrun; on CPU the ranks use gloo. Both ranks take the same steps. With
    train.compile=model the DDP-wrapped forward is compiled (DDPOptimizer off: it fails on dynamic sizes) and trains
    like the eager run (the aot_eager backend: capture without inductor's minutes of cold code generation)."""
    losses = {}
    for how in ("off", "model"):
        out = tmp_path / how
        r = subprocess.run(_args(shards, out, 3, "--gpus", "2", "--device", "cpu", "--set", "train.save_every=3",
                                 "--set", f"train.compile={how}", "--set", "train.compile_backend=aot_eager"),
                           env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert (out / "checkpoints" / "latest" / "model.safetensors").exists()
        state = torch.load(out / "checkpoints" / "latest" / "trainer_state.pt", weights_only=True)
        assert len(state["loader"]) == 2  # one loader position per rank, for exact resume
        losses[how] = _losses(out)
        assert list(losses[how]) == [1, 2, 3]
        assert not [k for k in _weights(out) if "_orig_mod" in k]
    assert list(losses["model"].values()) == pytest.approx(list(losses["off"].values()), rel=1e-4)


def test_dpo_precomputed_reference_equals_frozen_copy(shards, tmp_path):
    from fvlm_cli.train.loop import load_run_config, train

    losses = {}
    for ref in ("frozen", "precomputed"):
        cfg = load_run_config(str(ROOT / "configs/train/tiny-dpo.yaml"), [
            f"data.train=[{{path: {shards}/dpo}}]", "data.batch_size=4", "data.num_workers=0", "train.steps=3",
            "train.init_from=null", "train.log_every=1", f"out_dir={tmp_path / ref}", f"dpo.reference={ref}"])
        train(cfg, dpo=True, quiet=True)
        losses[ref] = _losses(tmp_path / ref)
    assert (tmp_path / "precomputed" / "ref_logps.json").exists()
    assert len(json.loads((tmp_path / "precomputed" / "ref_logps.json").read_text())) == 16
    for step in (1, 2, 3):
        assert losses["frozen"][step] == pytest.approx(losses["precomputed"][step], rel=1e-5, abs=1e-6)
