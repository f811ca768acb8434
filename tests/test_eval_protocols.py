"""Scoring protocols (SPEC §5.1): `reference` against an independent step-by-step computation of the original
rules (pad/<|im_end|> denominator quirk, option parsing quirks, image replication), `lmms-eval` prompt strings
and answer extraction, and results.md showing published numbers only beside rows of their protocol."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shard_factory import write_shards
from test_bench import MODES, mcq_samples

from fvlm_cli.data.media import frames_to_tensor
from fvlm_cli.errors import FvlmError
from fvlm_cli.eval import bench, lmms_eval, mcq, reference
from fvlm_cli.eval.report import render_results_md

pytestmark = pytest.mark.usefixtures("one_thread")


def _questions(n, start=0):
    out = []
    for s in mcq_samples(n, start=start):
        rec = s["record"]
        out.append(mcq.Question(rec["id"], rec["messages"][:1], rec["options"], rec["answer"], s["frames"],
                                rec["category"], rec["cluster"], is_image=len(s["frames"]) == 1,
                                question=rec["question"], bench="synthetic"))
    return out


# ---------------------------------------------------------------- reference: the rules one by one

def test_options_are_parsed_from_the_user_text_with_the_original_quirks():
    text = "Which city?\nB. Paris\nA. Rome\nC. Oslo\nAnswer with the option's letter."
    assert reference.parse_options(text) == [
        ("A", "A. Rome"), ("B", "B. Paris"), ("C", "C. Oslo\nAnswer with the option's letter.")]  # sorted; joined
    spurious = reference.parse_options("Where is the U.S. capital?\nA. here\nB. there")
    assert [lo[0] for lo in spurious] == ["A", "B", "U"]  # "U.S." makes an option "U. S. capital?"
    assert spurious[2][1] == "U. S. capital?"
    assert reference.parse_options("no options at all") == []
    # a repeated letter: the original collected options in a dict, so the last text wins
    assert reference.parse_options("Pick one.\nA. red\nB. blue\nA. green") == [("A", "A. green"), ("B", "B. blue")]


def test_worked_example_scores_four_nlls_over_five_positions(lm):
    tok = lm.tokenizer
    assert tok.pad_token == "<|im_end|>"  # the tiny tokenizer, like SmolLM2's, pads with <|im_end|>
    enc = reference.encode("Is there a dog?\nA. yes\nB. no", tok)
    scored = enc.full[0][enc.prompt_len:]
    assert tok.convert_ids_to_tokens(scored) == ["A", ".", "Ġyes", "<|im_end|>", "Ċ"]
    nll = [1.0, 2.0, 3.0, 7.0, 4.0]
    assert reference.score(nll, scored, reference.ignore_index(tok)) == pytest.approx((1 + 2 + 3 + 4) / 5)
    assert reference.score(nll, scored, -100) == pytest.approx(17 / 5)  # a tokenizer without pad ignores nothing


def test_lowest_score_wins_and_a_tie_goes_to_the_earliest_letter():
    assert reference.pick([2.0, 1.0, 1.0], ["A", "B", "C"]) == "B"
    assert reference.pick([1.0, 1.0], ["A", "B"]) == "A"
    assert reference.pick([], []) is None


def _independent_reference(lm, q, mode, tok):
    """The original rules computed directly: full forward per option, plain CE with ignore_index = pad id."""
    system = {"role": "system", "content": "You are a helpful AI assistant."}
    user = {"role": "user", "content": q.messages[0]["content"]}
    matches = [(m.group(1), m.group(1) + ". " + m.group(2).strip())
               for m in __import__("re").finditer(r'([A-Z])\.\s*(.+?)(?=\n[A-Z]\.|$)', user["content"], __import__("re").DOTALL)]
    matches.sort(key=lambda x: x[0])
    prompt = tok(tok.apply_chat_template([system, user], tokenize=False, add_generation_prompt=True))["input_ids"]
    frames = q.frames if len(q.frames) != 1 else np.repeat(q.frames, 8, axis=0)
    x = frames_to_tensor(frames)[None] if len(frames) else torch.zeros(1, 1, 3, 64, 64)
    fm = torch.ones(1, max(len(frames), 1), dtype=torch.bool) if len(frames) else torch.zeros(1, 1, dtype=torch.bool)
    pad = tok.pad_token_id
    scores, letters, counts = [], [], []
    for letter, option in matches:
        text = tok.apply_chat_template([system, user, {"role": "assistant", "content": option}], tokenize=False)
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            logits = lm.model(x, ids, frame_mask=fm, mode=mode)["logits"][0]
        P = len(prompt)
        ce = F.cross_entropy(logits[P - 1 : -1], ids[0, P:], ignore_index=pad, reduction="none")
        scores.append(float(ce.sum()) / ce.numel())
        letters.append(letter)
        counts.append((ce.numel(), int((ids[0, P:] == pad).sum())))
    best = min(range(len(scores)), key=lambda i: (scores[i], i)) if scores else None
    return scores, (letters[best] if best is not None else None), counts


@pytest.mark.parametrize("pad", ["<|im_end|>", "<|endoftext|>"])
def test_reference_fast_path_equals_the_independent_computation(lm, pad):
    tok = copy.deepcopy(lm.tokenizer)
    tok.pad_token = pad
    qs = _questions(5)
    qs[1].messages = [{"role": "user", "content": "Where in the U.S. is it?\nA. red\nB. blue\nAnswer with the letter."}]
    view = copy.copy(lm)
    view.tokenizer = tok
    rows = mcq.score_questions(view, qs, modes=MODES, methods=["loglik"], protocol="reference")
    assert {r["protocol"] for r in rows} == {"reference"}
    checked_pad = 0
    for r in rows:
        q = next(q for q in qs if q.id == r["id"])
        scores, pred, counts = _independent_reference(lm, q, r["mode"], tok)
        np.testing.assert_allclose(r["scores"], scores, atol=2e-5, rtol=0)
        assert r["prediction"] == pred and r["correct"] == (pred == q.answer)
        checked_pad += sum(n_pad for _, n_pad in counts)
    if pad == "<|im_end|>":
        assert checked_pad > 0  # the quirk was exercised: <|im_end|> positions counted in the denominator
    spurious = [r for r in rows if r["id"] == qs[1].id][0]
    assert [o[0] for o in spurious["scored_options"]] == ["A", "B", "U"]


def test_reference_replicates_images_to_eight_and_runs_dino_once(lm, monkeypatch):
    calls = []
    real = lm.model.encoder.encode
    monkeypatch.setattr(lm.model.encoder, "encode", lambda x: calls.append(len(x)) or real(x))
    lm.media.image_frames, before = 4, lm.media.image_frames  # the protocol's 8, whatever the model's policy
    try:
        mcq.score_questions(lm, _questions(4), modes=MODES, methods=["loglik"], protocol="reference")
    finally:
        lm.media.image_frames = before
    assert calls == [3 + 2 + 8 + 4]  # one encode of every real frame; the image (q002) as 8 frames


# ---------------------------------------------------------------- lmms-eval

def test_lmms_eval_prompt_strings():
    opts = ["red", "blue"]
    assert lmms_eval.prompt("mvbench", "What colour?", opts) == \
        "Question:What colour?\nOption:\n(A) red\n(B) blue\nOnly give the best option.\n"
    assert lmms_eval.prompt("video-mme", "What colour?", opts) == (
        "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
        "Respond with only the letter (A, B, C, or D) of the correct option.\nWhat colour?\nA. red\nB. blue\n"
        "\nAnswer with the option's letter from the given choices directly.")
    assert lmms_eval.prompt("pope", " Is there a cat in the image? ", ["yes", "no"]) == \
        "Is there a cat in the image?\nAnswer the question using a single word or phrase."
    assert lmms_eval.prompt("scienceqa", "Context: hot\nWhich is warm?", opts) == \
        "Context: hot\nWhich is warm?\nA. red\nB. blue\nAnswer with the option's letter from the given choices directly."
    assert lmms_eval.prompt("mlvu", "What colour?", opts) == \
        "\nQuestion: What colour?\nOptions:\n(A) red\n(B) blue\nOnly give the best option.\n\nBest option: ("
    doc = "What colour?\n(A) red\n(B) blue"  # MLVU_dev's question field, used whole as lmms-eval does
    assert lmms_eval.prompt("mlvu", "What colour?", opts, doc) == \
        "\nWhat colour?\n(A) red\n(B) blue\nOnly give the best option.\n\nBest option: ("
    with pytest.raises(ValueError):
        lmms_eval.prompt("synthetic", "q", opts)


@pytest.mark.parametrize("bench_name,generated,truth,ok", [
    ("mvbench", "(B) blue", "B", True), ("mvbench", "B. blue", "B", True), ("mvbench", "a red one", "A", True),
    ("mvbench", "blue", "B", False), ("video-mme", "The best answer is C.", "C", True),
    ("video-mme", "I would say that it is clearly the one on the left of the frame", "A", False),
    ("mlvu", "B) blue", "B", True), ("mlvu", " B ", "B", True), ("mlvu", "B. blue", "B", False),
    ("mlvu", "The answer is B", "B", False), ("pope", " Yes ", "A", True), ("pope", "Yes.", "A", False),
    ("scienceqa", "A", "A", True), ("scienceqa", "A. red", "A", True), ("scienceqa", "(A)", "A", False),
])
def test_lmms_eval_answer_extraction(bench_name, generated, truth, ok):
    assert lmms_eval.correct(bench_name, generated, truth, 4) is ok


def test_lmms_eval_scores_mvbench_over_answered_and_mlvu_per_task_type():
    rows = [{"generated": "A", "correct": True}, {"generated": "", "correct": False}, {"generated": "x", "correct": False}]
    assert lmms_eval.lmms_eval_score("mvbench", rows) == pytest.approx(1 / 2)
    rows = [{"category": "a", "correct": True}, {"category": "a", "correct": True}, {"category": "b", "correct": False}]
    assert lmms_eval.lmms_eval_score("mlvu", rows) == pytest.approx(0.5)


# ---------------------------------------------------------------- run_bench rows and results.md

@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("mvb")
    samples = mcq_samples(6)
    for i, s in enumerate(samples):  # Video-MME-style breakdown fields
        s["record"].update(duration=["short", "medium", "long"][i % 3], domain="Knowledge", task_type=f"T{i % 2}")
    write_shards(d, samples, per_shard=4)
    return d


@pytest.mark.parametrize("protocol,method", [("reference", "loglik"), ("lmms-eval", "generate"), ("fvlm", "loglik")])
def test_rows_record_protocol_and_tables_show_only_matching_published_numbers(lm, shards, tmp_path, protocol, method):
    res = bench.run_bench(["mvbench", "video-mme"], lm, modes=["coarse_only", "coarse_fine"], protocol=protocol,
                          methods="auto" if protocol != "fvlm" else ["loglik"], out_dir=tmp_path,
                          data_paths={"mvbench": str(shards), "video-mme": str(shards)}, progress=False)
    for name in ("mvbench", "video-mme"):
        b = res["benchmarks"][name]
        assert b["protocol"] == protocol and list(b["coarse_only"]) == [method]
        leaf = b["coarse_only"][method]
        assert leaf["protocol"] == protocol and leaf["method"] == method and leaf["frame_policy"]
        assert set(leaf["breakdowns"]["duration"]) == {"short", "medium", "long"}
        assert all("se" in v for v in leaf["breakdowns"]["duration"].values())
    rows = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert {r["protocol"] for r in rows} == {protocol}
    md = (tmp_path / "results.md").read_text()
    assert ("fVLM-135M published" in md) == (protocol == "reference")
    assert ("SmolVLM2-256M (published)" in md) == (protocol == "lmms-eval")
    if protocol == "reference":
        assert "| coarse_only | loglik | reference |" in md and "| 27.4 |" in md and "| 29.5 |" in md
        assert "original research code" in md
    if protocol == "lmms-eval":
        assert "measured with lmms-eval" in md
    assert "by duration" in md


def test_protocols_reject_methods_and_benchmarks_outside_them(lm, shards, tmp_path):
    with pytest.raises(FvlmError, match="reference protocol scores by loglik only"):
        bench.parse_methods("generate", "reference")
    with pytest.raises(FvlmError, match="lmms-eval protocol scores by generate only"):
        bench.parse_methods("both", "lmms-eval")
    assert bench.parse_methods("auto", "fvlm") == ["loglik", "generate"]
    with pytest.raises(FvlmError, match="--protocol lmms-eval scores .*not synthetic"):
        bench.resolve_names(["synthetic"], "lmms-eval")
    with pytest.raises(FvlmError, match="not captioning"):
        bench.resolve_names(["captioning"], "reference")
    with pytest.raises(FvlmError, match="another run.*protocol"):
        kw = dict(modes=["coarse_only"], out_dir=tmp_path, data_paths={"mvbench": str(shards)}, limit=1,
                  progress=False)
        bench.run_bench(["mvbench"], lm, protocol="reference", **kw)
        bench.run_bench(["mvbench"], lm, protocol="lmms-eval", **kw)


def test_published_numbers_never_sit_beside_another_protocol():
    leaf = {"accuracy": 0.3, "correct": 3, "total": 10, "se": 0.1, "seconds": 1.0}
    for protocol in ("fvlm", "reference", "lmms-eval"):
        md = render_results_md({"model": "m", "benchmarks": {"mvbench": {"coarse_fine": {"loglik": {
            **leaf, "protocol": protocol}}}}})
        assert ("28.0" in md) == (protocol == "reference")
        assert ("39.7" in md) == (protocol == "lmms-eval")


def test_cli_protocol_errors_are_one_line_exit_2(shards):
    from test_bench import _cli

    for args, text in ((("synthetic", "--protocol", "lmms-eval"), "--protocol lmms-eval scores"),
                       (("mvbench", "--protocol", "reference", "--method", "generate"), "scores by loglik only"),
                       (("mvbench", "--protocol", "nope"), "'nope' is not one of")):
        r = _cli("bench", *args, "--model", "tiny", "--data", str(shards), "--device", "cpu")
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert r.returncode == 2 and len(lines) == 1 and text in lines[0], r.stderr


def test_pope_breaks_precision_recall_f1_down_by_category(lm, tmp_path):
    samples = mcq_samples(8, yes_no=True)
    for i, s in enumerate(samples):
        s["record"]["category"] = ["random", "adversarial"][(i // 2) % 2]  # each holds yes and no
    write_shards(tmp_path / "pope", samples, per_shard=8)
    res = bench.run_bench(["pope"], lm, modes=["coarse_only"], out_dir=tmp_path / "o", methods=["loglik"],
                          data_paths={"pope": str(tmp_path / "pope")}, progress=False)
    leaf = res["benchmarks"]["pope"]["coarse_only"]["loglik"]
    rows = [json.loads(x) for x in (tmp_path / "o" / "samples.jsonl").read_text().splitlines()]
    for cat in ("random", "adversarial"):
        mine = [r for r in rows if r["category"] == cat]
        tp = sum(r["prediction"] == "A" and r["truth"] == "A" for r in mine)
        said_yes = sum(r["prediction"] == "A" for r in mine)
        per = leaf["per_category"][cat]
        assert per["total"] == 4 and per["precision"] == pytest.approx(tp / said_yes if said_yes else 0.0)
        assert per["recall"] == pytest.approx(tp / sum(r["truth"] == "A" for r in mine))
        assert {"f1", "yes_ratio", "se"} <= set(per)


def test_lmms_eval_generations_are_read_by_the_task_rule(lm, shards, tmp_path, monkeypatch):
    from fvlm_cli.model import scoring

    said = lm.tokenizer.encode("The best answer is C because", add_special_tokens=False)
    monkeypatch.setattr(scoring, "greedy", lambda model, stream, h, n, stops=(): [list(said) for _ in range(h.shape[0])])
    seen = []
    real = mcq.encode_prompts
    monkeypatch.setattr(mcq, "encode_prompts", lambda msgs, *a, **k: seen.extend(msgs) or real(msgs, *a, **k))
    res = bench.run_bench(["video-mme", "scienceqa"], lm, modes=["coarse_only"], protocol="lmms-eval",
                          out_dir=tmp_path, data_paths={"video-mme": str(shards), "scienceqa": str(shards)},
                          progress=False)
    rows = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    vm = [r for r in rows if r["benchmark"] == "video-mme"]
    assert all(r["prediction"] == "C" and r["correct"] == (r["truth"] == "C") for r in vm)
    assert seen[0][0]["content"].startswith(lmms_eval.VIDEOMME_INSTRUCTION)
    sq = [r for r in rows if r["benchmark"] == "scienceqa"]
    assert all(r["prediction"] is None and not r["correct"] for r in sq)  # "The best ..." is no ScienceQA answer
    assert res["benchmarks"]["scienceqa"]["questions"] == 5  # scienceqa_img: the text-only question is left out


def test_lmms_eval_pope_metrics_are_lmms_evals(lm, tmp_path, monkeypatch):
    """Under --protocol lmms-eval POPE's precision/recall/F1 read only an exact yes/no, and yes_ratio is the share of
    ground-truth yes, as lmms-eval prints them ("Yes, there is." is a yes for fvlm's own reading, not for it)."""
    from fvlm_cli.model import scoring

    said = lm.tokenizer.encode("Yes, there is.", add_special_tokens=False)
    monkeypatch.setattr(scoring, "greedy", lambda model, stream, h, n, stops=(): [list(said) for _ in range(h.shape[0])])
    write_shards(tmp_path / "pope", mcq_samples(8, yes_no=True), per_shard=8)
    res = bench.run_bench(["pope"], lm, modes=["coarse_only"], protocol="lmms-eval", out_dir=tmp_path / "o",
                          data_paths={"pope": str(tmp_path / "pope")}, progress=False)
    leaf = res["benchmarks"]["pope"]["coarse_only"]["generate"]
    rows = [json.loads(x) for x in (tmp_path / "o" / "samples.jsonl").read_text().splitlines()]
    truth_yes = sum(r["truth"] == "A" for r in rows) / len(rows)
    assert leaf["accuracy"] == 0.0 and leaf["precision"] == 0.0 and leaf["recall"] == 0.0 and leaf["f1"] == 0.0
    assert leaf["yes_ratio"] == pytest.approx(truth_yes) and 0 < truth_yes < 1
