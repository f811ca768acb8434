"""`fvlm profile`: the CLI writes complete JSON; the reference variants it compares against are apples to apples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fvlm_cli.model.build import build_model, preset
from fvlm_cli.profile import synthetic_batch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import reference_variants  # noqa: E402  (measurement code lives in benchmarks/)
ONE_THREAD = ["--set", "profile.threads=1"]  # steady on a shared CI machine


def fvlm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fvlm_cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_profile_train_writes_the_split_and_throughput(tmp_path):
    out = tmp_path / "train.json"
    r = fvlm("profile", "train", "--preset", "tiny", "--steps", "2", "--batch-size", "2", "--frames", "2",
             "--out", str(out), *ONE_THREAD)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["target"] == "train" and res["mode"] == "coarse_fine" and res["device_type"] == "cpu"
    assert len(res["steps_s"]) == 2
    for key in ("step_s", "samples_per_s", "frames_per_s", "tokens_per_s", "flops_per_step", "achieved_tflops",
                "peak_memory_gb", "activation_gb", "parameters"):
        assert res[key] > 0, key
    assert set(res["split_s"]) == {"data", "dino_forward", "forward_rest", "backward", "optimizer"}
    assert all(v >= 0 for v in res["split_s"].values())
    # the phases tile the step: their mean sum is the mean step time
    assert sum(res["split_s"].values()) == pytest.approx(res["step_s_mean"], rel=1e-6)
    assert res["samples_per_s"] == pytest.approx(2 / res["step_s"])
    assert res["mfu"] is None and res["peak_flops"] is None  # no peak FLOP/s for a CPU
    assert res["target_tokens"] == 2 * 64  # loss on all text (video first: token 0 is predicted by the last frame)
    assert "profile train" in r.stdout


def test_profile_infer_and_data_write_json(tmp_path):
    out = tmp_path / "infer.json"
    r = fvlm("profile", "infer", "--batch-size", "2", "--frames", "2", "--text-tokens", "8", "--steps", "1",
             "--warmup", "0", "--set", "profile.max_new_tokens=3", "--out", str(out), *ONE_THREAD)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert set(res["modes"]) == {"coarse_only", "coarse_fine", "autoregressive"}
    for row in res["modes"].values():
        assert row["new_tokens"] == 2 * 3  # no stop token: every prompt decodes max_new_tokens
        for key in ("first_token_s", "total_s", "decode_tokens_per_s", "tokens_per_s", "prefill_tokens_per_s"):
            assert row[key] > 0, key

    out = tmp_path / "data.json"
    r = fvlm("profile", "data", "--batch-size", "4", "--frames", "4", "--steps", "3", "--set", "profile.samples=24",
             "--set", "profile.workers=[0,1]", "--out", str(out), *ONE_THREAD)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert set(res["workers"]) == {"0", "1"} and res["shard_samples"] == 24
    for row in res["workers"].values():
        assert row["samples"] == 12 and row["samples_per_s"] > 0 and row["frames_per_s"] > 0
        assert 0 <= row["padded_frame_fraction"] < 1


@pytest.mark.parametrize("args", [["profile", "nope"], ["profile", "train", "--set", "profile.coarse_pas=full"],
                                  ["profile", "train", "--preset", "huge"]])
def test_bad_target_set_key_or_preset_is_one_line_exit_2(args):
    r = fvlm(*args)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "error" in r.stderr


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(preset("tiny"), pretrained=False).eval()


def _loss(model, batch, mode, variant=None):
    if variant is not None:
        model = reference_variants.apply(_copy(model), variant)
    with torch.no_grad():
        return float(model(**batch, mode=mode, return_logits=False)["loss"])


def _copy(model):
    import copy

    return copy.deepcopy(model)


@pytest.mark.parametrize("variant", list(reference_variants.VARIANTS))
@pytest.mark.parametrize("mode", ["coarse_only", "coarse_fine", "autoregressive"])
@pytest.mark.parametrize("question_first", [False, True])
def test_reference_variants_give_the_same_loss(tiny, variant, mode, question_first):
    batch = synthetic_batch(tiny, 3, 4, 12, ragged=True, seed=1)  # 4, 3, 2 frames: padded slots exist
    if question_first:
        batch["visual_pos"] = torch.tensor([5, 0, 9])
    base = _loss(tiny, batch, mode)
    assert _loss(tiny, batch, mode, variant) == pytest.approx(base, abs=1e-4)


def test_answer_tokens_put_the_loss_on_the_tail_only(tiny):
    batch = synthetic_batch(tiny, 2, 2, 10, answer_tokens=3)
    assert batch["loss_mask"].tolist() == [[0] * 7 + [1] * 3] * 2
    assert batch["attention_mask"].sum() == 20


def test_library_encodes_every_slot_and_the_reference_only_real_frames(tiny, monkeypatch):
    for variant, expected in ((None, [12]), ("dino_real_only", [9])):  # B x T slots (static) vs 9 real frames
        model = _copy(tiny) if variant is None else reference_variants.apply(_copy(tiny), variant)
        seen = []
        inner = model.encoder.encode
        monkeypatch.setattr(model.encoder, "encode", lambda pixels, inner=inner, **kw: seen.append(pixels.shape[0]) or inner(pixels, **kw))
        batch = synthetic_batch(model, 3, 4, 8, ragged=True)
        with torch.no_grad():
            model(**batch, mode="coarse_fine")
        assert seen == expected, variant


def test_full_coarse_pass_reference_runs_the_longer_sequence(tiny, monkeypatch):
    model = reference_variants.apply(_copy(tiny), "full_coarse_pass")
    lengths = []
    inner = model._run_packed
    monkeypatch.setattr(model, "_run_packed", lambda e, v, layout: lengths.append(layout.index.shape[1]) or inner(e, v, layout))
    batch = synthetic_batch(model, 2, 3, 10)
    with torch.no_grad():
        model(**batch, mode="coarse_fine")
    assert lengths == [3 + 10, 3 + 10]  # the coarse pass is as long as the main pass (visual only: 3)


def test_profile_variant_script_binds_the_reference(tmp_path):
    out = tmp_path / "v.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_variant.py"), "lm_head_all", "train",
                        "--steps", "1", "--batch-size", "2", "--frames", "2", "--text-tokens", "8", "--out", str(out),
                        *ONE_THREAD], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["target"] == "train"
