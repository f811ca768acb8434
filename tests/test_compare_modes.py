"""`fvlm compare-modes` (SPEC §5): per-mode text, latency, loss, attention entropy and heatmap PNGs."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from media_factory import write_image, write_video

from fvlm_cli.eval import compare
from fvlm_cli.model.vlm import build_layout

MODES = ("coarse_only", "coarse_fine", "autoregressive")


pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.mark.parametrize("visual_pos", [0, 3])
def test_autoregressive_queries_reproduce_the_autoregressive_mode(lm, visual_pos):
    """Reading the frames with the collected queries and running the text on top gives forward's AR logits."""
    model = lm.model
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(2, 4, 3, 64, 64, generator=g)
    ids = torch.randint(3, 1000, (2, 9), generator=g)
    am = torch.ones(2, 9, dtype=torch.long)
    am[1, 6:] = 0
    fm = torch.ones(2, 4, dtype=torch.bool)
    fm[1, 3:] = False
    vp = torch.full((2,), visual_pos)
    with torch.no_grad():
        ref = model(frames, ids, am, frame_mask=fm, visual_pos=vp, mode="autoregressive")["logits"]
        cache, flat_idx = model.encode_frames(frames, fm)
        text_emb = model.embed_text(ids)
        q = compare.mode_queries(model, "autoregressive", text_emb, cache, flat_idx, fm, am, vp)
        torch.testing.assert_close(q[:, 0], model.q_init.expand(2, -1))
        vis = model.read(q, cache, fm)
        layout = build_layout(am, fm, vp)
        out = model._head(model._run_packed(text_emb, vis, layout), layout, ids, am.bool(), True)["logits"]
    torch.testing.assert_close(out[0], ref[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[1, :6], ref[1, :6], atol=1e-4, rtol=1e-4)
    coarse = compare.mode_queries(model, "coarse_only", text_emb, cache, flat_idx, fm, am, vp)
    assert torch.equal(coarse, model.q_static.expand(8, -1).reshape(2, 4, -1))


def test_patch_heatmaps_drop_cls_and_keep_the_grid():
    L, T, H, g = 2, 3, 4, 4
    attn = torch.full((L, T, H, 1 + g * g), 0.01)
    attn[..., 0] = 5.0                  # CLS: dropped
    attn[-1, 1, :, 1 + 2 * g + 3] = 9.0  # last layer, frame 2: patch (row 2, col 3)
    last, mean = compare.patch_heatmaps(attn, g)
    assert last.shape == mean.shape == (T, g, g)
    np.testing.assert_allclose(last.sum((1, 2)), 1.0, rtol=1e-5)
    assert np.unravel_index(last[1].argmax(), (g, g)) == (2, 3)
    np.testing.assert_allclose(last[0], 1 / 16, rtol=1e-5)  # uniform elsewhere
    assert mean[1, 2, 3] < last[1, 2, 3]                  # averaged with the uniform first layer


def test_compare_modes_library_on_an_image(lm, tmp_path):
    img = write_image(tmp_path / "red.png", size=(80, 64))
    rep = compare.compare_modes(lm, [str(img)], prompt="What colour?", reference="Red.", out_dir=tmp_path / "out",
                                max_new_tokens=3, progress=False)
    entry = rep["inputs"][0]
    assert entry["frames"] == lm.media.image_frames  # an image is replicated to 8 frames
    for m in MODES:
        r = entry["modes"][m]
        assert 0 < r["loss"] < 20 and r["loss_tokens"] == len(lm.tokenizer.encode("Red.")) + 1  # + <|im_end|>
        assert 0 < r["attn_entropy"] <= r["attn_entropy_uniform"] + 1e-5
        grid = lm.model.encoder.patch_grid(lm.model.image_size)
        assert r["attn_entropy_uniform"] == pytest.approx(math.log(1 + grid * grid))
        assert r["seconds"] >= r["first_token_s"] > 0 and 1 <= r["new_tokens"] <= 3
    with Image.open(entry["heatmaps"]["last"]) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1]  # 8 frame columns, 3 mode rows


def test_cli_compare_modes_on_a_video(tmp_path):
    video = write_video(tmp_path / "clip.mp4", fps=8, seconds=3, size=(96, 64))
    out = tmp_path / "cmp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "fvlm_cli", "compare-modes", str(video), "--model", "tiny", "--reference",
                        "A white square moves right.", "--out", str(out), "--max-new-tokens", "4", "--device", "cpu"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert all(m in r.stdout for m in ("coarse_only", "coarse_fine", "autoregress"))
    rep = json.loads((out / "compare.json").read_text())
    assert rep["modes"] == list(MODES) and rep["reference"] == "A white square moves right."
    (entry,) = rep["inputs"]
    assert entry["frames"] == 3  # 1 fps over 3 s
    assert set(entry["modes"]) == set(MODES)
    for m in MODES:
        res = entry["modes"][m]
        assert {"text", "seconds", "first_token_s", "loss", "attn_entropy", "attn_entropy_all_layers"} <= set(res)
        assert res["loss"] > 0
    for kind in ("last", "mean"):
        path = out / f"00_clip_attn_{kind}.png"
        assert entry["heatmaps"][kind] == str(path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the queries differ between modes, so their attention does too
    ents = [entry["modes"][m]["attn_entropy_all_layers"] for m in MODES]
    assert len(set(ents)) > 1


def test_cli_compare_modes_missing_file_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fvlm_cli", "compare-modes", str(tmp_path / "nope.mp4"), "--model", "tiny",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "media file not found" in r.stderr and "Traceback" not in r.stderr
    assert len([x for x in r.stderr.splitlines() if x.startswith("error:")]) == 1


def test_library_mixed_inputs_keep_every_good_comparison(lm, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"no video here")
    img = write_image(tmp_path / "ok.png", size=(64, 64))
    seen = []
    rep = compare.compare_modes(lm, [str(bad), str(img), str(tmp_path / "gone.mp4")], out_dir=tmp_path / "out",
                                max_new_tokens=2, modes=["coarse_only"], progress=False, on_error=seen.append)
    assert [e["input"] for e in rep["inputs"]] == [str(img)]
    assert [e["input"] for e in rep["errors"]] == [str(bad), str(tmp_path / "gone.mp4")] and seen == rep["errors"]
    assert "not a readable video" in rep["errors"][0]["error"] and rep["errors"][1]["error"] == "media file not found"
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert saved["errors"] == rep["errors"] and len(saved["inputs"]) == 1


def test_cli_compare_modes_mixed_batch_json(tmp_path):
    video = write_video(tmp_path / "clip.mp4", fps=8, seconds=2, size=(64, 48))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"no video here")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "fvlm_cli", "compare-modes", str(bad), str(video), "--model", "tiny",
                        "--out", str(tmp_path / "cmp"), "--max-new-tokens", "2", "--json"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    err, report = [json.loads(x) for x in r.stdout.splitlines()]
    assert set(err) == {"input", "error"} and err["input"] == str(bad)
    assert [e["input"] for e in report["inputs"]] == [str(video)] and set(report["inputs"][0]["modes"]) == set(MODES)
    assert [x for x in r.stderr.splitlines() if x.startswith("error:")] == [f"error: {bad}: {err['error']}"]
