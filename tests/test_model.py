"""The model contract (SPEC §2): parameter count, names, modes, batch invariance, cache equivalence."""

import json

import pytest
import torch

from fvlm_cli.errors import ModelLoadError
from fvlm_cli.model import build
from fvlm_cli.model.generate import generate_ids
from fvlm_cli.settings import ChatConfig, MediaConfig

MODES = ("coarse_only", "coarse_fine", "autoregressive")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build.build_model(build.preset("tiny")).eval()


def batch(B=2, T=4, S=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(B, T, 3, 64, 64, generator=g)
    ids = torch.randint(3, 2000, (B, S), generator=g)
    am = torch.ones(B, S, dtype=torch.long)
    fm = torch.ones(B, T, dtype=torch.bool)
    return frames, ids, am, fm


@pytest.fixture(scope="module")
def arch135m():
    return build.build_model(build.preset("fvlm-135m"), pretrained=False)


def test_135m_parameter_count(arch135m):
    assert arch135m.num_parameters() == 157_310_976


def test_135m_state_dict_names(arch135m):
    keys = set(arch135m.state_dict())
    for k in ("q_static", "q_init", "encoder.query_input_proj.weight", "encoder.output_proj.weight",
              "encoder.output_proj.bias", "dino_to_llm.weight", "dino_to_llm.bias", "llm_to_query.weight",
              "llm_to_query.bias", "llm.lm_head.weight", "llm.model.embed_tokens.weight",
              "encoder.dino.embeddings.cls_token", "encoder.dino.layernorm.weight"):
        assert k in keys, k
    assert "encoder.query_input_proj.bias" not in keys  # bias-free on purpose
    prefixes = ("encoder.dino.", "encoder.query_input_proj.", "encoder.output_proj.", "llm.model.", "llm.lm_head.",
                "dino_to_llm.", "llm_to_query.", "q_static", "q_init")
    assert all(k.startswith(prefixes) for k in keys)
    assert arch135m.q_static.shape == (1, 384) and arch135m.visual_scale == 0.14
    # std-1.0 query init (a small init makes attention uniform)
    assert 0.8 < arch135m.q_static.std().item() < 1.2


def test_encoder_patch_pass_matches_dinov2(tiny):
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ours = tiny.encoder.encode(x).features
        ref = tiny.encoder.dino(pixel_values=x).last_hidden_state
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_modes_shapes_and_fine_differs(tiny):
    frames, ids, am, fm = batch()
    with torch.no_grad():
        outs = {m: tiny(frames, ids, am, frame_mask=fm, mode=m) for m in MODES}
    for m, o in outs.items():
        assert o["logits"].shape == (2, 10, tiny.llm.config.vocab_size)
        assert torch.isfinite(o["loss"])
        assert o["n_targets"].tolist() == [10, 10]  # first text token predicted from the last visual position
    assert (outs["coarse_fine"]["logits"] - outs["coarse_only"]["logits"]).abs().max() > 1e-3


def test_loss_is_mean_over_masked_targets(tiny):
    frames, ids, am, fm = batch()
    lm = torch.zeros_like(am)
    lm[:, 5:] = 1
    with torch.no_grad():
        o = tiny(frames, ids, am, loss_mask=lm, frame_mask=fm, mode="coarse_only")
    # logits at text position s predict token s+1
    logp = torch.log_softmax(o["logits"], -1)
    manual = -torch.stack([logp[b, s - 1, ids[b, s]] for b in range(2) for s in range(5, 10)]).mean()
    torch.testing.assert_close(o["loss"], manual, atol=1e-5, rtol=1e-5)


def _reference_autoregressive(model, frames, ids):
    """No KV cache: re-run the LLM over the whole prefix at every frame, then over the full sequence."""
    T = frames.shape[0]
    cache = model.encoder.encode(frames)
    q = model.q_init
    tokens = []
    for t in range(T):
        z = model.encoder.query(q, cache.select(torch.tensor([t])))
        tokens.append(model.project(z))
        seq = torch.cat(tokens, 0)[None]
        h = model.llm.model(inputs_embeds=seq).last_hidden_state
        q = model.llm_to_query(h[:, -1])
    seq = torch.cat([torch.cat(tokens, 0)[None], model.embed_text(ids[None])], 1)
    h = model.llm.model(inputs_embeds=seq).last_hidden_state
    return model.llm.lm_head(h[0, T:])


def test_autoregressive_equals_uncached_reference(tiny):
    frames, ids, am, fm = batch(B=1, T=5, S=7)
    with torch.no_grad():
        ours = tiny(frames, ids, am, frame_mask=fm, mode="autoregressive")["logits"][0]
        ref = _reference_autoregressive(tiny, frames[0], ids[0])
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("visual_pos", [0, 3])
def test_batch_invariance(tiny, mode, visual_pos):
    frames, ids, am, fm = batch(B=2, T=5, S=12)
    am[0, 8:] = 0  # sample 0: shorter text and fewer frames, padded beside sample 1
    fm[0, 3:] = False
    vp = torch.full((2,), visual_pos)
    with torch.no_grad():
        both = tiny(frames, ids, am, frame_mask=fm, visual_pos=vp, mode=mode)
        alone = tiny(frames[:1, :3], ids[:1, :8], visual_pos=vp[:1], mode=mode)
    torch.testing.assert_close(both["logits"][0, :8], alone["logits"][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(both["logps"][0], alone["logps"][0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_generation_cache_equals_no_cache(tiny, mode):
    frames, ids, am, fm = batch(B=2, T=4, S=6)
    am[1, 4:] = 0
    fm[1, 2:] = False
    vp = torch.tensor([0, 2])
    out = generate_ids(tiny, frames, fm, ids, am, vp, mode=mode, max_new_tokens=5)
    for b in range(2):
        n, nf = int(am[b].sum()), int(fm[b].sum())
        seq, ref = ids[b, :n].tolist(), []
        for _ in range(5):
            with torch.no_grad():
                lo = tiny(frames[b : b + 1, :nf], torch.tensor([seq]), visual_pos=vp[b : b + 1], mode=mode)["logits"]
            ref.append(int(lo[0, -1].argmax()))
            seq.append(ref[-1])
        assert out[b] == ref


def test_generation_stops_and_samples(tiny):
    frames, ids, am, fm = batch(B=2, T=2, S=4)
    greedy = generate_ids(tiny, frames, fm, ids, am, torch.zeros(2, dtype=torch.long), max_new_tokens=8)
    stop = greedy[0][2]
    stopped = generate_ids(tiny, frames, fm, ids, am, torch.zeros(2, dtype=torch.long), max_new_tokens=8,
                           stop_ids=(stop,))
    assert stopped[0] == greedy[0][: greedy[0].index(stop) + 1]
    a = generate_ids(tiny, frames, fm, ids, am, torch.zeros(2, dtype=torch.long), max_new_tokens=6, temperature=1.0,
                     top_p=0.9, seed=3)
    b = generate_ids(tiny, frames, fm, ids, am, torch.zeros(2, dtype=torch.long), max_new_tokens=6, temperature=1.0,
                     top_p=0.9, seed=3)
    assert a == b and all(len(x) == 6 for x in a)


def _save(tiny, tmp_path, naming):
    from safetensors.torch import save_file

    folder = build.save_model_folder(tmp_path / naming, tiny, None, build.preset("tiny"), MediaConfig(), ChatConfig())
    # the exported names are those of the installed transformers: convert to the naming asked for either way
    sd = build.convert_dino_keys(build.export_state_dict(tiny), naming)
    assert build.detect_dino_naming(sd) == naming
    save_file(sd, str(folder / "model.safetensors"))
    return folder


def test_folder_roundtrip_both_dino_namings(tiny, tmp_path):
    frames, ids, am, fm = batch()
    with torch.no_grad():
        ref = tiny(frames, ids, am, frame_mask=fm, mode="coarse_fine")["logits"]
    for naming in ("transformers-4", "transformers-5"):
        folder = _save(tiny, tmp_path, naming)
        conf = json.loads((folder / "config.json").read_text())
        assert conf["query_dim"] == 64 and "llm_config" in conf and "dino_config" in conf
        lm = build.load_folder(folder)
        assert lm.naming == naming
        with torch.no_grad():
            out = lm.model.eval()(frames, ids, am, frame_mask=fm, mode="coarse_fine")["logits"]
        torch.testing.assert_close(out, ref)


def test_lm_head_present_or_absent(tiny, tmp_path):
    from safetensors.torch import save_file

    folder = _save(tiny, tmp_path, "transformers-5")
    sd = build.export_state_dict(tiny)
    assert "llm.lm_head.weight" not in sd
    sd["llm.lm_head.weight"] = sd["llm.model.embed_tokens.weight"].clone()
    save_file(sd, str(folder / "model.safetensors"))
    lm = build.load_folder(folder)
    assert lm.model.llm.lm_head.weight.data_ptr() == lm.model.llm.model.embed_tokens.weight.data_ptr()


def test_missing_and_unexpected_keys_are_listed(tiny):
    fresh = build.build_model(build.preset("tiny"))
    sd = build.export_state_dict(tiny)
    sd.pop("q_init")
    sd["encoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(ModelLoadError, match=r"1 missing: q_init.*1 unexpected: encoder.extra.weight"):
        build.load_weights(fresh, sd)


def test_unknown_model_spec_is_clear():
    with pytest.raises(ModelLoadError, match="not a preset"):
        build.load_model("no such thing!")


def test_released_layout_torch_file_named_safetensors_with_v4_names(tiny, tmp_path):
    """sanps/fVLM-135M ships a torch.save()d state dict called model.safetensors, with 4.x DINOv2 names and no
    fvlm fields in a config: it must load, say which names it found, and give the same outputs."""
    folder = tmp_path / "release"
    folder.mkdir()
    sd = build.convert_dino_keys(build.export_state_dict(tiny), "transformers-4")
    sd["llm.lm_head.weight"] = sd["llm.model.embed_tokens.weight"]
    torch.save(sd, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(build.fvlm_config_dict(tiny, build.preset("tiny"), MediaConfig(), ChatConfig())))
    lm = build.load_folder(folder)
    assert lm.naming == "transformers-4"
    frames, ids, am, fm = batch()
    with torch.no_grad():
        torch.testing.assert_close(lm.model.eval()(frames, ids, am, frame_mask=fm)["logits"],
                                   tiny(frames, ids, am, frame_mask=fm)["logits"])


def test_not_a_weights_file_is_a_clear_error(tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(ModelLoadError, match="not a safetensors or torch weights file"):
        build._read_weights(folder)
