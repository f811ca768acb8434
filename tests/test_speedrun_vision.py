"""benchmarks/speedrun_vision.py: the measurement tools behind docs/LOG.md's speedrun findings (issue 13)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import speedrun_vision as sv  # noqa: E402  (measurement code lives in benchmarks/)

from fvlm_cli import config as cfglib  # noqa: E402
from fvlm_cli.data import synthetic  # noqa: E402
from fvlm_cli.data.media_base import frames_to_tensor  # noqa: E402
from fvlm_cli.model import encoder as enc_mod  # noqa: E402
from fvlm_cli.train.loop import load_run_config  # noqa: E402


def test_oracle_features_follow_the_object():
    for k in range(12):
        v = synthetic.make_video(k)
        f = sv.oracle_features(frames_to_tensor(v.frames[[0, 28]]))
        dx, dy = (f[1, :2] - f[0, :2]).tolist()
        want = {"left": dx < -0.2, "right": dx > 0.2, "up": dy < -0.2, "down": dy > 0.2}[v.direction]
        assert want, (v.direction, dx, dy)
        assert abs(f[0, 2] - f[1, 2]) < 0.05  # area is constant along the path


def test_stage1_steps_edits_a_copy_of_the_configs(monkeypatch, tmp_path):
    shipped = cfglib.CONFIG_DIR
    monkeypatch.setattr(cfglib, "CONFIG_DIR", shipped)
    sv._stage1_steps(7, tmp_path)
    assert cfglib.CONFIG_DIR == tmp_path / "configs"
    assert load_run_config(str(cfglib.CONFIG_DIR / "train" / "tiny-stage1.yaml")).train.steps == 7
    assert load_run_config(str(cfglib.CONFIG_DIR / "train" / "tiny-stage2.yaml")).train.steps == \
        load_run_config(str(shipped / "train" / "tiny-stage2.yaml")).train.steps
    assert load_run_config(str(shipped / "train" / "tiny-stage1.yaml")).train.steps == 300


@pytest.mark.parametrize("oracle", [False, True])
def test_recipe_run_trains_and_scores_every_category(monkeypatch, oracle):
    cls = enc_mod.FoveatedEncoder
    monkeypatch.setattr(cls, "encode", cls.encode)  # patch_oracle rebinds these; restored after the test
    monkeypatch.setattr(cls, "query", cls.query)
    row = sv.recipe_run(oracle, stage1=2, s1_connector_lr=3e-3, s1_targets="answer", steps=2, seed=0,
                        n_videos=8, batch=4, eval_videos=3, s1_dino_lr=0.0, direction_first=1)
    assert set(row["accuracy"]) == {"colour", "shape", "direction", "count", "total"}
    assert all(0.0 <= a <= 1.0 for a in row["accuracy"].values())
    assert row["tokens"] == ("oracle" if oracle else "tiny DINO + query")
    assert row["direction_first"] == 1 and row["stage1_dino_lr"] == 0.0
    stats = row["tokens_after_stage1"]
    assert 0.0 < stats["position_share"] < 1.0 and stats["shared_part_norm"] <= stats["token_norm"] + 1e-4


def test_shared_fraction_tells_a_shared_prefix_from_varied_tokens():
    import torch

    from fvlm_cli.eval.loss import shared_fraction

    g = torch.Generator().manual_seed(0)
    varied = torch.randn(64, 32, generator=g)
    assert shared_fraction(varied) < 0.3
    prefix = torch.randn(1, 32, generator=g) * 10 + 0.1 * varied
    assert shared_fraction(prefix) > 0.99
    assert shared_fraction(torch.ones(5, 3)) == pytest.approx(1.0)


def test_smooth_task_variant_scales_the_frame_and_the_shapes(monkeypatch):
    monkeypatch.setattr(synthetic, "make_video", synthetic.make_video)  # restored after the test
    sv.use_task_variant(64, 1.0)
    shipped = synthetic.make_video(3)  # the smooth task as it was shipped
    assert synthetic.make_video(3, seconds=1, fps=1).frames.shape == (1, 64, 64, 3)
    sv.use_task_variant(96, 2.0)
    big = synthetic.make_video(3)
    assert big.frames.shape == (32, 96, 96, 3)
    assert (big.color, big.shape, big.direction, big.count) == (shipped.color, shipped.shape, shipped.direction,
                                                                shipped.count)
    area = lambda v: (v.frames[0] != v.frames[0, 0, 0]).any(-1).sum() / v.count
    assert 2.5 < (area(big) / 96 ** 2) / (area(shipped) / 64 ** 2) < 5.5  # ~4x the area, relative to the frame
