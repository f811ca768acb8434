"""The training hot path has no host syncs (SPEC §9.1): each mode's forward captures as one graph.

dynamo raises on a graph break under fullgraph=True, and a host sync (`.item()`, `.tolist()`, `bool(t)`, a
data-dependent shape) is a graph break. The compiled forward must also equal the eager one.
"""

from __future__ import annotations

import pytest
import torch

from fvlm_cli.model.build import build_model, preset
from fvlm_cli.model.vlm import MODES, Bounds, build_layout
from fvlm_cli.profile import synthetic_batch


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(preset("tiny"), pretrained=False).eval()


def _batch(model, question_first: bool):
    b = synthetic_batch(model, 3, 3, 10, ragged=True, answer_tokens=5, seed=2)  # 3, 2, 2 frames: padded slots
    b["attention_mask"][2, 8:] = 0  # ragged text too
    if question_first:
        b["visual_pos"] = torch.tensor([5, 0, 7])
    return b


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("question_first", [False, True])
def test_forward_captures_without_graph_breaks(tiny, mode, question_first):
    torch._dynamo.reset()
    b = _batch(tiny, question_first)
    bounds = Bounds.of(b["visual_pos"], b["loss_mask"], b["attention_mask"])
    compiled = torch.compile(tiny.forward, fullgraph=True, backend="eager")
    with torch.no_grad():
        ref = tiny(**b, mode=mode)
        out = compiled(**b, mode=mode, bounds=bounds)
    for key in ("loss", "logps", "token_logps"):
        torch.testing.assert_close(out[key], ref[key], atol=1e-5, rtol=1e-5)
    valid = b["attention_mask"].bool()
    torch.testing.assert_close(out["logits"][valid], ref["logits"][valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_forward_and_backward_capture_without_bounds(tiny, mode):
    """No host bounds: the compiled forward takes the static worst case (S) and is still exact."""
    torch._dynamo.reset()
    b = _batch(tiny, question_first=True)
    model = tiny.train()
    try:
        compiled = torch.compile(model.forward, fullgraph=True, backend="eager")
        out = compiled(**b, mode=mode, return_logits=False)
        out["loss"].backward()
        with torch.no_grad():
            ref = model(**b, mode=mode, return_logits=False)
        torch.testing.assert_close(out["loss"], ref["loss"], atol=1e-5, rtol=1e-5)
        assert model.dino_to_llm.weight.grad is not None
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_layout_is_built_on_the_device_by_index_arithmetic():
    """A reference built sample by sample in Python equals the vectorised layout (ragged text and frames)."""
    am = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    fm = torch.tensor([[True, True, False], [True, False, True], [False, False, False]])
    vp = torch.tensor([2, 0, 9])  # 9 > n: clamped to the text length
    lay = build_layout(am, fm, vp)
    B, S, T = 3, 5, 3
    for b in range(B):
        n = int(am[b].sum())
        p = min(int(vp[b]), n)
        frames = [t for t in range(T) if fm[b, t]]
        seq = [b * S + j for j in range(p)] + [B * S + b * T + t for t in frames] + [b * S + j for j in range(p, n)]
        assert lay.index[b, : len(seq)].tolist() == seq
        assert lay.valid[b].tolist() == [i < len(seq) for i in range(S + T)]
        assert lay.text_pos[b].tolist() == [j if j < p else (j + len(frames) if j < n else -1) for j in range(S)]
        assert lay.vis_pos[b].tolist() == [p + frames.index(t) if t in frames else -1 for t in range(T)]
        assert lay.prev_pos[b].tolist() == [x - 1 if x > 0 else -1 for x in lay.text_pos[b].tolist()]
    pre = build_layout(am, fm, torch.tensor([2, 0, 1]), text="prefix", max_prefix=2)
    assert pre.index.shape == (3, 2 + 3)  # the prefix bound, not S: the coarse pass stays short
    assert pre.valid.sum(1).tolist() == [2 + 2, 0 + 2, 1 + 0]


def test_dpo_pair_runs_dino_once_per_video_and_equals_repeated_frames(tiny, monkeypatch):
    """repeat_frames=2: the B videos are encoded once for the 2B text rows, with the log-probs of repeating them."""
    b = _batch(tiny, question_first=True)
    ids2 = torch.cat([b["input_ids"], b["input_ids"].flip(1)])
    two = {k: torch.cat([b[k], b[k]]) for k in ("attention_mask", "loss_mask", "visual_pos")}
    rows = []
    inner = tiny.encoder.encode
    monkeypatch.setattr(tiny.encoder, "encode", lambda px, **kw: rows.append(px.shape[0]) or inner(px, **kw))
    for mode in MODES:
        with torch.no_grad():
            ref = tiny(torch.cat([b["frames"]] * 2), ids2, frame_mask=torch.cat([b["frame_mask"]] * 2), mode=mode,
                       return_logits=False, **two)
            rows.clear()
            out = tiny(b["frames"], ids2, frame_mask=b["frame_mask"], mode=mode, return_logits=False, repeat_frames=2, **two)
        assert rows == [3 * 3], mode  # B x T slots once, not 2B x T
        torch.testing.assert_close(out["logps"], ref["logps"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_unused_parameters_are_exactly_those_without_gradients(tiny, mode):
    """DDP ignores `unused_parameters(mode)` instead of searching each step: the set must be exact, also for a
    text-only batch (the vision path runs on one masked slot)."""
    model = tiny.train()
    try:
        for frames_on in (True, False):
            b = _batch(model, question_first=True)
            if not frames_on:
                b["frames"], b["frame_mask"] = b["frames"][:, :0], b["frame_mask"][:, :0]
            model.zero_grad(set_to_none=True)
            model(**b, mode=mode, return_logits=False)["loss"].backward()
            none = {n for n, p in model.named_parameters() if p.grad is None}
            assert none == model.unused_parameters(mode), (mode, frames_on)
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_masked_step_skips_on_the_device_and_leaves_state_unchanged():
    from fvlm_cli.settings import OptimConfig
    from fvlm_cli.train.optim import build_optimizer, masked_step

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4))
    opt = build_optimizer(net, OptimConfig(), torch.device("cpu"))
    assert opt.defaults["fused"]  # the CPU has the fused kernel: the skip needs no host read
    net(torch.randn(2, 4)).sum().backward()
    masked_step(opt, torch.tensor(True))
    before = [p.detach().clone() for p in net.parameters()]
    state = {k: v.clone() for k, v in opt.state[next(net.parameters())].items()}
    net(torch.randn(2, 4)).sum().backward()
    masked_step(opt, torch.tensor(False))
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters()))
    for k, v in opt.state[next(net.parameters())].items():
        assert torch.equal(v, state[k]), k  # moments and the step count untouched
    masked_step(opt, torch.tensor(True))
    assert not all(torch.equal(a, p) for a, p in zip(before, net.parameters()))


def test_compiled_encoder_saves_plain_parameter_names(tiny, tmp_path, monkeypatch):
    """train.compile compiles the bound methods, not the module: the state dict has no `_orig_mod.` prefix."""
    import copy

    from fvlm_cli.train import loop

    model = copy.deepcopy(tiny)
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend="eager"))
    loop.compile_encoder(model)
    b = _batch(model, question_first=False)
    with torch.no_grad():
        torch.testing.assert_close(model(**b, mode="coarse_fine")["loss"], tiny(**b, mode="coarse_fine")["loss"])
    assert not [k for k in model.state_dict() if "_orig_mod" in k]
    assert set(model.state_dict()) == set(tiny.state_dict())


def test_position_init_scale_applies_to_a_fresh_dino_only():
    """tiny's random DINO gets a x20 position table (content would outweigh position ~28x); loaded weights win."""
    from fvlm_cli.config import from_dict, to_dict
    from fvlm_cli.model.build import load_weights
    from fvlm_cli.settings import ModelConfig

    d = to_dict(preset("tiny"))
    assert d["dino_config"]["position_init_scale"] == 20
    plain = dict(d, dino_config={k: v for k, v in d["dino_config"].items() if k != "position_init_scale"})
    torch.manual_seed(0)
    scaled = build_model(from_dict(ModelConfig, d), pretrained=False)
    torch.manual_seed(0)
    base = build_model(from_dict(ModelConfig, plain), pretrained=False)
    pe = lambda m: m.encoder.dino.embeddings.position_embeddings
    torch.testing.assert_close(pe(scaled), 20 * pe(base))
    load_weights(scaled, base.state_dict())
    torch.testing.assert_close(pe(scaled), pe(base))


def test_train_compile_switch_reads_the_old_boolean():
    """train.compile: off | encoder | model; the earlier true/false still reads (true was the encoder compile)."""
    from fvlm_cli.config import ConfigError, load
    from fvlm_cli.settings import RunConfig

    assert load(RunConfig).train.compile == "off"
    for given, meant in (("true", "encoder"), ("false", "off"), ("off", "off"), ("encoder", "encoder"),
                         ("model", "model")):
        assert load(RunConfig, overrides=[f"train.compile={given}"]).train.compile == meant
    with pytest.raises(ConfigError, match="train.compile"):
        load(RunConfig, overrides=["train.compile=graph"])


def test_train_compile_model_trains_the_compiled_forward(tmp_path, monkeypatch):
    """train.compile=model: the training step runs the whole forward through torch.compile (here with
    train.compile_backend=aot_eager: dynamo's capture and AOTAutograd's joint graph without inductor's code generation,
    which CI's cold cache would take minutes for), ragged batches of changing shapes included; it trains like the eager loop, and the
    checkpoint carries the module's own parameter names."""
    import json
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    from fvlm_cli.train import loop

    sys.path.insert(0, str(Path(__file__).parent))
    from shard_factory import make_samples, write_shards

    write_shards(tmp_path / "train", make_samples(n_video=16, n_image=8, size=64), per_shard=4)
    write_shards(tmp_path / "text", make_samples(n_text=8, size=64, prefix="t"), per_shard=4)
    root = Path(__file__).resolve().parent.parent
    compiled = []
    real = torch.compile

    def spy(obj, **kw):
        compiled.append(obj)
        return real(obj, **kw)

    def run(how: str, out: Path) -> list[float]:
        cfg = loop.load_run_config(str(root / "configs/train/tiny-stage2.yaml"), [
            f"data.train=[{{path: {tmp_path}/train}}]", f"data.text=[{{path: {tmp_path}/text}}]", "data.val=null",
            "train.init_from=null", "data.batch_size=4", "data.num_workers=0", "train.steps=4", "train.log_every=1",
            "train.save_every=0",
            f"train.compile={how}", "train.compile_backend=aot_eager", f"out_dir={out}"])
        loop.train(cfg, quiet=True)
        return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # the tests above compiled too
    monkeypatch.setattr(torch, "compile", spy)
    eager = run("off", tmp_path / "eager")
    assert not compiled
    graphs = run("model", tmp_path / "model")
    assert len(compiled) == 1 and isinstance(compiled[0], torch.nn.Module)  # the module, not a method
    # dynamo captured the forward, and changing batch shapes turned dynamic instead of a graph per batch
    assert 1 <= torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2
    assert len(graphs) == len(eager) == 4
    assert graphs[0] == pytest.approx(eager[0], abs=1e-5)  # same weights, same first batch
    assert graphs == pytest.approx(eager, rel=1e-3)  # later steps may drift by rounding (docs/LOG.md, issue 13)
    names = set(load_file(str((tmp_path / "model/checkpoints/latest").resolve() / "model.safetensors")))
    assert names == set(load_file(str((tmp_path / "eager/checkpoints/latest").resolve() / "model.safetensors")))
    assert not [n for n in names if "_orig_mod" in n]


def test_train_compile_model_runs_dpo_pairs(tmp_path):
    """DPO under train.compile=model: the pair forward (DINO once per pair, repeat_frames=2) goes through the compiled
    module and gives the eager loop's losses."""
    import json
    import sys
    from pathlib import Path

    from fvlm_cli.train import loop

    sys.path.insert(0, str(Path(__file__).parent))
    from shard_factory import make_samples, write_shards

    write_shards(tmp_path / "dpo", make_samples(n_video=12, size=64, prefix="d", dpo=True), per_shard=4)
    root = Path(__file__).resolve().parent.parent
    losses = {}
    for how in ("off", "model"):
        out = tmp_path / how
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        cfg = loop.load_run_config(str(root / "configs/train/tiny-dpo.yaml"), [
            f"data.train=[{{path: {tmp_path}/dpo}}]", "data.batch_size=4", "data.num_workers=0", "train.steps=3",
            "train.init_from=null", "train.log_every=1", f"train.compile={how}", "train.compile_backend=aot_eager",
            f"out_dir={out}"])
        loop.train(cfg, dpo=True, quiet=True)
        assert (torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0) == (how == "model")
        losses[how] = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses["model"]) == 3
    assert losses["model"] == pytest.approx(losses["off"], rel=1e-4)
