"""`fvlm bench --gpus N` (SPEC §5.1): questions sharded over torchrun ranks (2 CPU processes, gloo), merged into
the same samples.jsonl / results.json as one process, and resumable under a different N."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shard_factory import write_shards
from test_bench import MODES, mcq_samples

from fvlm_cli.eval import bench
from fvlm_cli.eval.schedule import PARTS
from fvlm_cli.model.build import load_model

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "FVLM_BACKEND": "gloo"}
NUMERIC = ("mean_nll", "sum_nll", "scores")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("ranks")
    write_shards(d, mcq_samples(7), per_shard=3)
    return d


def _bench(shards, out, *extra):
    r = subprocess.run([sys.executable, "-m", "fvlm_cli", "bench", "synthetic", "--model", "tiny", "--data",
                        str(shards), "--out", str(out), "--device", "cpu", "--batch-size", "2", "--json", *extra],
                       env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _rows(out):
    return [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]


def _same_rows(a, b):
    assert [(r["mode"], r["method"], r["id"]) for r in a] == [(r["mode"], r["method"], r["id"]) for r in b]
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k not in NUMERIC + ("seconds",)} == \
               {k: v for k, v in y.items() if k not in NUMERIC + ("seconds",)}
        for k in NUMERIC:
            if k in x:
                assert x[k] == pytest.approx(y[k], abs=1e-5)


def _leaves(out):
    res = json.loads((out / "results.json").read_text())
    syn = res["benchmarks"]["synthetic"]
    return {(m, me): {k: v for k, v in leaf.items() if k != "seconds"}
            for m in MODES for me, leaf in syn[m].items()}


@pytest.mark.slow
def test_two_ranks_equal_one_process_and_resume_under_another_n(shards, tmp_path):
    one, two, mixed = tmp_path / "one", tmp_path / "two", tmp_path / "mixed"
    _bench(shards, one)
    r = _bench(shards, two, "--gpus", "2")
    assert "rank 1/2" in r.stderr and "rank 0/2" in r.stderr  # both ranks scored their share
    assert json.loads(r.stdout)["benchmarks"]["synthetic"]["questions"] == 7  # rank 0 alone reports
    assert not (two / PARTS).exists()
    _same_rows(_rows(one), _rows(two))
    assert _leaves(one) == _leaves(two)
    # resume across a changed N: two ranks do the first 3 questions, one process the rest
    _bench(shards, mixed, "--gpus", "2", "--limit", "3")
    assert len(_rows(mixed)) == 3 * 3 * 2
    _bench(shards, mixed)
    _same_rows(_rows(one), _rows(mixed))
    assert _leaves(one) == _leaves(mixed)


def test_rows_left_in_rank_part_files_are_resumed_by_a_single_process(shards, tmp_path, monkeypatch):
    """A killed 2-rank run leaves parts/samples.rank<r>.jsonl: a later run under any N treats them as done."""
    torch.manual_seed(0)
    lm = load_model("tiny", device="cpu")
    kw = dict(modes=MODES, methods=["loglik"], data_paths={"synthetic": str(shards)}, batch_size=2, progress=False)
    bench.run_bench(["synthetic"], lm, out_dir=tmp_path / "full", **kw)
    out = tmp_path / "killed"
    bench.run_bench(["synthetic"], lm, out_dir=out, limit=3, **kw)
    (out / PARTS).mkdir()
    shutil.move(out / "samples.jsonl", out / PARTS / "samples.rank1.jsonl")
    frames = []
    real = lm.model.encoder.encode
    monkeypatch.setattr(lm.model.encoder, "encode", lambda x: frames.append(len(x)) or real(x))
    res = bench.run_bench(["synthetic"], lm, out_dir=out, **kw)
    assert sum(frames) == 4 + 0 + 3 + 2  # q003..q006 only: q000..q002 came from the part file
    assert not (out / PARTS).exists()
    _same_rows(_rows(tmp_path / "full"), _rows(out))
    assert res["benchmarks"]["synthetic"]["coarse_only"]["loglik"]["total"] == 7
