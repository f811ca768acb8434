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


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
