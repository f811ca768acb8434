"""`fvlm bench` (SPEC §5): fast MCQ scoring equals the naive path, outputs and their structure, resume, POPE,
captioning, val-loss, and the CLI's one-line errors."""

import io
import json
import shutil
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from shard_factory import COLOURS, SHAPES, solid_frames, write_shards

from fvlm_cli.errors import DataError, FvlmError
from fvlm_cli.eval import bench, mcq
from fvlm_cli.eval.letters import answer_letter
from fvlm_cli.eval.stats import accuracy_summary, clustered_se
from fvlm_cli.model import scoring
from fvlm_cli.model.generate import generate_ids

MODES = ("coarse_only", "coarse_fine", "autoregressive")
SIZE = 64  # the tiny preset's image size
INSTRUCTION = "Answer with the option's letter from the given choices directly."


def mcq_samples(n, *, yes_no=False, start=0):
    """MCQ samples in the SPEC §3.2 layout: videos of 2-4 frames, images (1 frame), text-only; 2-4 options."""
    out = []
    for j in range(n):
        i = start + j
        if yes_no:
            options, answer = ["yes", "no"], "AB"[i % 2]
        else:
            k = 2 + i % 3
            options, answer = [COLOURS[(i + m) % 4] for m in range(k)], "ABCD"[i % k]
        t = [3, 2, 1, 4, 0][i % 5]
        question = f"What colour is the {SHAPES[i % 3]}?"
        user = question + "\n" + "\n".join(f"{'ABCD'[m]}. {o}" for m, o in enumerate(options)) + "\n" + INSTRUCTION
        rec = {"id": f"q{i:03d}", "source": "synthetic", "kind": "mcq", "frame_count": t,
               "timestamps": [float(s) for s in range(t)],
               "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
               "question": question, "options": options, "answer": answer, "category": SHAPES[i % 3],
               "cluster": f"video{i // 3}"}
        if t:
            rec["media_type"] = "image" if t == 1 else "video"
        out.append({"id": rec["id"], "frames": solid_frames(i, t, SIZE), "record": rec})
    return out


pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def mcq_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mcq")
    write_shards(d, mcq_samples(8), per_shard=3)
    return d


def _questions(n=5):
    qs = []
    for s in mcq_samples(n):
        rec = s["record"]
        qs.append(mcq.Question(rec["id"], rec["messages"][:1], rec["options"], rec["answer"], s["frames"],
                               rec["category"], rec["cluster"], is_image=len(s["frames"]) == 1,
                               question=rec["question"], bench="synthetic"))
    return qs


def _rows(out_dir):
    return [json.loads(line) for line in (out_dir / "samples.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- the fast path

@pytest.mark.parametrize("order", ["video_first", "question_first"])
@pytest.mark.parametrize("answer_format", ["letter", "text"])
def test_fast_scores_equal_naive_in_every_mode(lm, order, answer_format):
    batch = mcq.encode_batch(_questions(5), lm.tokenizer, system_prompt=lm.chat.system_prompt, order=order,
                             answer_format=answer_format)
    assert batch.frame_mask.sum(1).tolist() == [3, 2, 8, 4, 0]  # video, video, image replicated, video, text-only
    fast = mcq.score_fast(lm.model, batch, MODES, pad_id=lm.tokenizer.pad_token_id)
    naive = mcq.score_naive(lm.model, batch, MODES)
    for m in MODES:
        assert fast[m]["n_tokens"] == naive[m]["n_tokens"]
        for f_nll, n_nll, cnt in zip(fast[m]["sum_nll"], naive[m]["sum_nll"], fast[m]["n_tokens"]):
            np.testing.assert_allclose(np.array(f_nll) / cnt, np.array(n_nll) / cnt, atol=1e-4, rtol=0)
    # the modes really differ, so equality per mode is not trivially one number
    assert not np.allclose(fast["coarse_only"]["sum_nll"][0], fast["autoregressive"]["sum_nll"][0], atol=1e-4)


def test_option_continuations_are_answer_plus_im_end(lm):
    batch = mcq.encode_batch(_questions(2), lm.tokenizer, system_prompt="s", answer_format="letter")
    im_end = lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for conts, q in zip(batch.continuations, _questions(2)):
        assert len(conts) == len(q.options)
        assert all(c[-1] == im_end for c in conts)
        assert [lm.tokenizer.decode(c[:-1]) for c in conts] == list("ABCD"[: len(q.options)])


def test_greedy_from_prefix_equals_generate_ids_after_options(lm):
    """Generation continues on the prefix cache the options were forked from: the fork must leave it intact."""
    batch = mcq.encode_batch(_questions(4), lm.tokenizer, system_prompt=lm.chat.system_prompt)
    stops = mcq.stop_ids(lm.tokenizer)
    fast = mcq.score_fast(lm.model, batch, MODES, max_new_tokens=6, stops=stops, pad_id=lm.tokenizer.pad_token_id)
    for m in MODES:
        ref = generate_ids(lm.model, batch.frames, batch.frame_mask, batch.input_ids, batch.attention_mask,
                           batch.visual_pos, mode=m, max_new_tokens=6, stop_ids=stops, pad_id=lm.tokenizer.pad_token_id)
        assert fast[m]["generated"] == ref


def test_dino_runs_once_per_batch_for_all_options_and_modes(lm, monkeypatch):
    calls = []
    real = lm.model.encoder.encode
    monkeypatch.setattr(lm.model.encoder, "encode", lambda x: calls.append(len(x)) or real(x))
    mcq.score_questions(lm, _questions(4), modes=MODES, methods=("loglik", "generate"))
    assert calls == [3 + 2 + 8 + 4]  # one encode of every real frame of the batch


# ---------------------------------------------------------------- run_bench outputs

@pytest.fixture(scope="module")
def full_run(lm, mcq_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    results = bench.run_bench(["synthetic"], lm, modes=MODES, methods=("loglik", "generate"), out_dir=out,
                              data_paths={"synthetic": str(mcq_dir)}, batch_size=3, progress=False)
    return out, results


def test_every_mode_and_method_writes_the_three_files(full_run):
    out, results = full_run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    for key in ("model", "config", "fvlm_version", "git_revision", "model_info", "benchmarks"):
        assert key in on_disk
    assert on_disk["config"]["batch_size"] == 3
    syn = on_disk["benchmarks"]["synthetic"]
    assert syn["questions"] == 8
    assert syn["chance"] == pytest.approx(np.mean([1 / (2 + i % 3) for i in range(8)]))
    for m in MODES:
        for method in ("loglik", "generate"):
            leaf = syn[m][method]
            assert leaf["total"] == 8 and 0 <= leaf["correct"] <= 8
            assert leaf["accuracy"] == pytest.approx(leaf["correct"] / 8)
            assert leaf["seconds"] > 0 and leaf["chance"] == syn["chance"]
            assert set(leaf["per_category"]) == set(SHAPES)
    rows = _rows(out)
    assert len(rows) == 8 * 3 * 2
    assert len({(r["benchmark"], r["mode"], r["method"], r["id"]) for r in rows}) == len(rows)
    md = (out / "results.md").read_text()
    assert "## synthetic" in md and "random chance" in md
    for m in MODES:
        assert f"| {m} | loglik |" in md and f"| {m} | generate |" in md


def test_sample_rows_hold_scores_predictions_and_truth(full_run):
    out, _ = full_run
    for r in _rows(out):
        assert r["truth"] == "ABCD"[int(r["id"][1:]) % len(r["options"])]
        assert r["correct"] == (r["prediction"] == r["truth"])
        if r["method"] == "loglik":
            assert len(r["mean_nll"]) == len(r["sum_nll"]) == len(r["options"])
            assert r["mean_nll"] == pytest.approx([s / n for s, n in zip(r["sum_nll"], r["n_tokens"])])
            assert r["prediction"] == "ABCD"[int(np.argmin(r["mean_nll"]))]
        else:
            assert isinstance(r["generated"], str)
            assert r["prediction"] == answer_letter(r["generated"], r["options"])


def test_standard_error_is_clustered_by_video(full_run):
    out, results = full_run
    for m in MODES:
        rows = [r for r in _rows(out) if r["mode"] == m and r["method"] == "loglik"]
        leaf = results["benchmarks"]["synthetic"][m]["loglik"]
        assert leaf["se"] == pytest.approx(clustered_se([r["correct"] for r in rows], [r["cluster"] for r in rows]))
        assert leaf == {**accuracy_summary(rows), "seconds": leaf["seconds"], "chance": leaf["chance"],
                        "protocol": "fvlm", "method": "loglik", "frame_policy": leaf["frame_policy"]}


def test_resume_skips_done_questions(lm, mcq_dir, tmp_path, monkeypatch):
    frames_encoded = []
    real = lm.model.encoder.encode
    monkeypatch.setattr(lm.model.encoder, "encode", lambda x: frames_encoded.append(len(x)) or real(x))
    kw = dict(modes=MODES, methods=("loglik", "generate"), out_dir=tmp_path, data_paths={"synthetic": str(mcq_dir)},
              batch_size=2, progress=False)
    first = bench.run_bench(["synthetic"], lm, limit=3, **kw)
    assert first["benchmarks"]["synthetic"]["coarse_only"]["loglik"]["total"] == 3
    before = (tmp_path / "samples.jsonl").read_text()
    assert len(before.splitlines()) == 3 * 6 and sum(frames_encoded) == 3 + 2 + 8
    with open(tmp_path / "samples.jsonl", "a") as f:  # a kill in the middle of a line
        f.write('{"benchmark": "synthetic", "id": "q0')
    frames_encoded.clear()
    second = bench.run_bench(["synthetic"], lm, **kw)
    after = (tmp_path / "samples.jsonl").read_text()
    assert after.startswith(before)  # earlier lines untouched, the partial line dropped
    rows = [json.loads(x) for x in after.splitlines()]
    keys = [(r["mode"], r["method"], r["id"]) for r in rows]
    assert len(keys) == len(set(keys)) == 8 * 6
    assert sum(frames_encoded) == 4 + 0 + 3 + 2 + 8  # only q003..q007 were encoded
    assert second["benchmarks"]["synthetic"]["autoregressive"]["generate"]["total"] == 8
    third = bench.run_bench(["synthetic"], lm, **kw)  # nothing left to do: same aggregates, no new lines
    assert (tmp_path / "samples.jsonl").read_text() == after
    assert third["benchmarks"] == second["benchmarks"]


def test_resume_refuses_another_runs_out_dir(lm, mcq_dir, tmp_path):
    kw = dict(modes=["coarse_only"], methods=["loglik"], out_dir=tmp_path, data_paths={"synthetic": str(mcq_dir)},
              limit=1, progress=False)
    bench.run_bench(["synthetic"], lm, **kw)
    with pytest.raises(FvlmError, match="another run.*order"):
        bench.run_bench(["synthetic"], lm, order="question_first", **kw)
    with pytest.raises(FvlmError, match="another run.*max_new_tokens 8 there vs 32 now"):
        bench.run_bench(["synthetic"], lm, max_new_tokens=32, **kw)
    other = tmp_path.parent / (tmp_path.name + "-rebuilt")
    shutil.copytree(mcq_dir, other)
    with pytest.raises(FvlmError, match="another run.*synthetic data"):
        bench.run_bench(["synthetic"], lm, **{**kw, "data_paths": {"synthetic": str(other)}})
    bench.run_bench(["synthetic"], lm, **kw)  # the same settings resume


def test_letter_extraction_is_applied_to_generations(lm, mcq_dir, tmp_path, monkeypatch):
    said = lm.tokenizer.encode("I think the answer is (B) because", add_special_tokens=False)
    monkeypatch.setattr(scoring, "greedy", lambda model, stream, h, n, stops=(): [list(said) for _ in range(h.shape[0])])
    res = bench.run_bench(["synthetic"], lm, modes=["coarse_only"], methods=["generate"], out_dir=tmp_path,
                          data_paths={"synthetic": str(mcq_dir)}, progress=False)
    rows = _rows(tmp_path)
    assert all(r["prediction"] == "B" and r["generated"] == "I think the answer is (B) because" for r in rows)
    assert res["benchmarks"]["synthetic"]["coarse_only"]["generate"]["correct"] == sum(r["truth"] == "B" for r in rows)


def test_pope_adds_yes_no_metrics(lm, tmp_path):
    write_shards(tmp_path / "pope", mcq_samples(6, yes_no=True), per_shard=6)
    res = bench.run_bench(["POPE"], lm, modes=["coarse_only"], methods=["loglik"], out_dir=tmp_path / "out",
                          data_paths={"pope": str(tmp_path / "pope")}, progress=False)
    leaf = res["benchmarks"]["pope"]["coarse_only"]["loglik"]
    rows = _rows(tmp_path / "out")
    said_yes = sum(r["prediction"] == "A" for r in rows)
    assert leaf["yes_ratio"] == pytest.approx(said_yes / 6)
    tp = sum(r["prediction"] == "A" and r["truth"] == "A" for r in rows)
    assert leaf["recall"] == pytest.approx(tp / 3)
    for k in ("precision", "f1"):
        assert 0 <= leaf[k] <= 1
    assert "F1 (%)" in (tmp_path / "out" / "results.md").read_text()


def test_captioning_and_val_loss(lm, tmp_path):
    from fvlm_cli.data.loader import build_eval_loader
    from fvlm_cli.eval.loss import evaluate_loss
    from fvlm_cli.settings import RunConfig
    from shard_factory import make_samples

    samples = make_samples(n_video=3, n_image=1, size=SIZE)
    for s in samples:
        s["record"]["kind"] = "caption"
    write_shards(tmp_path / "cap", samples, per_shard=2)
    res = bench.run_bench(["captioning", "val-loss"], lm, modes=MODES, out_dir=tmp_path / "out", batch_size=3,
                          data_paths={"captioning": str(tmp_path / "cap"), "val_loss": str(tmp_path / "cap")},
                          caption_max_new_tokens=4, meteor=False, progress=False)
    cap = res["benchmarks"]["captioning"]
    for m in MODES:
        leaf = cap[m]["generate"]
        assert leaf["n"] == 4 and {"CIDEr", "BLEU-4", "ROUGE-L", "METEOR", "notes"} <= set(leaf)
        assert leaf["METEOR"] is None and "METEOR skipped: disabled" in leaf["notes"]  # skipped, and said so
    assert "METEOR skipped" in (tmp_path / "out" / "results.md").read_text()
    cfg = RunConfig(model=lm.model_cfg, media=lm.media, chat=lm.chat)
    batches = list(build_eval_loader(str(tmp_path / "cap"), lm.tokenizer, cfg, stage=2))
    ref = evaluate_loss(lm.model, batches, MODES, torch.device("cpu"))
    for m in MODES:
        leaf = res["benchmarks"]["val-loss"][m]["loss"]
        assert leaf["loss"] == pytest.approx(ref[f"loss_{m}"], abs=1e-5) and leaf["tokens"] == ref["tokens"]
    rows = _rows(tmp_path / "out")
    assert {r["method"] for r in rows if r["benchmark"] == "captioning"} == {"generate"}
    assert sum(r["benchmark"] == "val-loss" for r in rows) == 4 * 3


def test_unknown_names_and_missing_data_are_clear(lm, tmp_path, monkeypatch):
    with pytest.raises(FvlmError, match="unknown benchmark 'nope'; valid: val-loss, mvbench"):
        bench.resolve_names(["nope"])
    assert bench.resolve_names(["Video-MME", "video_mme", "VAL_LOSS"]) == ["video-mme", "val-loss"]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"looked for data/synthetic, data/synth/bench.*--data synthetic=DIR"):
        bench.run_bench(["synthetic"], lm, out_dir=tmp_path / "o", progress=False)
    (tmp_path / "data" / "mvbench").mkdir(parents=True)
    with pytest.raises(DataError, match="hold no mcq samples"):
        bench.run_bench(["mvbench"], lm, out_dir=tmp_path / "o", progress=False)


def _cli(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fvlm_cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


def test_cli_unknown_benchmark_is_one_line_exit_2():
    r = _cli("bench", "nope", "--model", "tiny")
    assert r.returncode == 2
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "unknown benchmark 'nope'" in lines[0] and "mvbench" in lines[0]
    assert "Traceback" not in r.stderr


def test_cli_bench_json(mcq_dir, tmp_path):
    r = _cli("bench", "synthetic", "--model", "tiny", "--data", str(mcq_dir), "--out", str(tmp_path / "o"),
             "--limit", "2", "--mode", "coarse_only,autoregressive", "--method", "loglik", "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    syn = res["benchmarks"]["synthetic"]
    assert set(k for k, v in syn.items() if isinstance(v, dict)) == {"coarse_only", "autoregressive"}
    assert syn["coarse_only"]["loglik"]["total"] == 2 and res["config"]["limit"] == 2
    assert "[fvlm bench] synthetic · coarse_only: 2/2" in r.stderr  # plain progress lines off a terminal


def test_video_mme_from_its_published_layout_is_reported_by_duration(lm, tmp_path):
    """precompute (the Hub layout: parquet + videos_chunked zips) -> bench: the duration breakdown reaches
    results.json from the shard's `meta`."""
    import fixtures_datasets as fx

    from fvlm_cli.data.precompute import run_precompute
    from fvlm_cli.data.sources.base import SourceOptions
    from fvlm_cli.settings import MediaConfig

    shards_dir = tmp_path / "shards"
    try:
        run_precompute("video-mme", str(fx.build_video_mme(tmp_path / "d")), shards_dir, workers=0, progress=False,
                       opts=SourceOptions(media=MediaConfig(image_size=SIZE), cache_dir=str(tmp_path / "c")))
    except DataError:
        pass  # the fixture holds a question whose video is in no archive: recorded as a failure
    res = bench.run_bench(["video-mme"], lm, modes=["coarse_only"], methods=["loglik"], out_dir=tmp_path / "out",
                          data_paths={"video-mme": str(shards_dir)}, progress=False)
    leaf = res["benchmarks"]["video-mme"]["coarse_only"]["loglik"]
    by_duration = leaf["breakdowns"]["duration"]
    assert sum(v["total"] for v in by_duration.values()) == leaf["total"] > 0
    assert set(by_duration) <= {"short", "medium", "long"} and "medium" in by_duration


def test_bench_reads_a_shard_set_over_http_like_the_local_copy(lm, mcq_dir, tmp_path):
    """--data may be a URL pattern (SPEC §3.7): the same questions and scores as the local shards."""
    from hub_standin import FileServer

    kw = dict(modes=["coarse_only"], methods=["loglik"], progress=False)
    local = bench.run_bench(["synthetic"], lm, out_dir=tmp_path / "local", data_paths={"synthetic": str(mcq_dir)}, **kw)
    n = len(list(mcq_dir.glob("*.tar")))
    with FileServer(mcq_dir) as srv:
        url = f"{srv.url}/shard-{{000000..{n - 1:06d}}}.tar"
        remote = bench.run_bench(["synthetic"], lm, out_dir=tmp_path / "remote", data_paths={"synthetic": url}, **kw)
    a, b = (local["benchmarks"]["synthetic"]["coarse_only"]["loglik"],
            remote["benchmarks"]["synthetic"]["coarse_only"]["loglik"])
    assert a["total"] == b["total"] == 8 and a["correct"] == b["correct"]
    rows = [[json.loads(line) for line in (tmp_path / d / "samples.jsonl").read_text().splitlines()]
            for d in ("local", "remote")]
    assert [(r["id"], r["mean_nll"]) for r in rows[0]] == [(r["id"], r["mean_nll"]) for r in rows[1]]


def test_a_broken_frame_excludes_its_question_and_the_result_says_what_is_not_scored(lm, tmp_path):
    """A JPEG that does not decode costs its question, recorded (samples.jsonl row "excluded", results.json
    "excluded"), not the bench; inputs precompute failed on (failures.jsonl beside the shards) are counted too,
    and results.md says both. A rerun resumes without tripping on it again."""
    import tarfile

    d = tmp_path / "mcq"
    (path, *_) = write_shards(d, mcq_samples(4), per_shard=4)
    with tarfile.open(path) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    broken = next(m.name.split(".")[0] for m, _ in members if m.name.endswith(".000.jpg"))
    with tarfile.open(path, "w") as t:
        for m, data in members:
            if m.name.startswith(broken) and m.name.endswith(".jpg"):
                data = b"not a jpeg"
            m.size = len(data)
            t.addfile(m, io.BytesIO(data))
    (d / "failures.jsonl").write_text('{"input": "gone.mp4", "error": "no such file"}\n')
    kw = dict(modes=["coarse_only"], methods=["loglik"], out_dir=tmp_path / "o", data_paths={"synthetic": str(d)},
              progress=False)
    res = bench.run_bench(["synthetic"], lm, **kw)["benchmarks"]["synthetic"]
    assert res["questions"] == 3 and res["excluded"]["questions"] == 1 and res["precompute_failures"] == 1
    assert res["coarse_only"]["loglik"]["total"] == 3
    rows = [json.loads(x) for x in (tmp_path / "o" / "samples.jsonl").read_text().splitlines()]
    assert sum("excluded" in r for r in rows) == 1 and len(rows) == 4
    md = (tmp_path / "o" / "results.md").read_text()
    assert "**Not scored:** 1 question(s) excluded" in md and "1 input(s) that precompute could not read" in md
    again = bench.run_bench(["synthetic"], lm, **kw)["benchmarks"]["synthetic"]
    assert again == res
