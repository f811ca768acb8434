"""`fvlm bench`: benchmarks in the three modes, resumable, on one process or many (`--gpus N`).

    lm = load_model("runs/stage2")
    results = run_bench(["mvbench", "synthetic"], lm, modes=MODES, protocol="fvlm", out_dir="runs/bench",
                        data_paths={"synthetic": "data/synth/bench"})

Benchmarks (SPEC §5) and what they read:
  mvbench, video-mme, pope, scienceqa, mlvu, synthetic   MCQ shards (`fvlm precompute NAME`, kind mcq), scored
        under a protocol (eval/mcq.py: fvlm | reference | lmms-eval; DINO once per question for all options,
        modes and methods). POPE adds precision/recall/F1/yes-ratio; breakdowns: eval/summary.py.
  captioning   caption shards (kind caption; the reference is the assistant message): greedy captions scored with
        CIDEr-D, BLEU-4, ROUGE-L and METEOR (METEOR only where Java exists). Method "generate".
  val-loss     any SFT shards through the evaluation loader: token-weighted mean NLL of the answer tokens per mode.

The seams: eval/schedule.py (shards, ranks, samples.jsonl, resume), eval/runners.py (scoring per benchmark
kind), eval/summary.py + eval/report.py (aggregates, results.md); this module ties them together.

Outputs in `out_dir`:
  samples.jsonl  one line per benchmark x question x mode x method, appended and flushed question by question,
                 rewritten in canonical order at the end (the same file whatever --gpus was).
  results.json   {"model", "model_info", "run", "config", "fvlm_version", "git_revision", "benchmarks":
                  {bench: {"chance", "data", "questions", "protocol", "frame_policy", mode: {method: leaf}}}}
                 (leaf: eval/summary.py), rewritten after every benchmark.
  results.md     render_results_md(results).
Resume: re-running with the same out_dir skips every (benchmark, mode, method, question id) already written
(under any number of ranks) and recomputes all aggregates from the rows; a half-written last line is dropped.
Aggregates cover exactly the questions this invocation selected (its --limit), wherever their rows came from.
A question id that repeats within a benchmark gets a "#k" suffix on its later occurrences, so keys stay unique.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Optional, Sequence

from fvlm_cli.data.remote import is_remote
from fvlm_cli.errors import DataError, FvlmError
from fvlm_cli.eval.settings import BENCHMARKS, BenchConfig

__all__ = ["BenchConfig", "run_bench", "run_config", "resolve_names", "parse_modes", "parse_methods"]

MODES = ("coarse_only", "coarse_fine", "autoregressive")
METHODS = ("loglik", "generate")
# Where a benchmark's shards are looked for when --data does not name them (first existing wins).
DEFAULT_DATA = {
    "val-loss": ["data/val-loss", "data/val", "data/synth/val"],
    "captioning": ["data/captioning", "data/synth/val"],
    "synthetic": ["data/synthetic", "data/synth/bench"],
}
_PRECOMPUTE_HINT = {
    "val-loss": "any SFT shards (e.g. `fvlm precompute synthetic --split val --out data/synth/val`)",
    "captioning": "caption shards (e.g. `fvlm precompute synthetic --split val --out data/synth/val`)",
    "synthetic": "`fvlm precompute synthetic --split bench --out data/synth/bench`",
}


# ---------------------------------------------------------------- names, modes, paths

def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def resolve_names(names: Sequence[str], protocol: str = "fvlm") -> list[str]:
    """Canonical benchmark names ("Video-MME", "video_mme" -> "video-mme"); FvlmError listing the valid ones."""
    if not names:
        raise FvlmError(f"no benchmark given; choose from {', '.join(BENCHMARKS)}")
    table = {_norm(n): n for n in BENCHMARKS}
    out = []
    for name in names:
        canon = table.get(_norm(name))
        if canon is None:
            raise FvlmError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}")
        if canon not in out:
            out.append(canon)
    if protocol != "fvlm":
        from fvlm_cli.eval import lmms_eval

        allowed = [n for n in out if BENCHMARKS[n] == "mcq" and (protocol == "reference" or lmms_eval.supports(n))]
        if off := [n for n in out if n not in allowed]:
            what = "MCQ benchmarks" if protocol == "reference" else ", ".join(lmms_eval.BENCHMARKS)
            raise FvlmError(f"--protocol {protocol} scores {what}; not {', '.join(off)} (use --protocol fvlm)")
    return out


def parse_modes(text: str | Sequence[str]) -> list[str]:
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if items == ["all"]:
        return list(MODES)
    bad = [m for m in items if m not in MODES]
    if bad or not items:
        raise FvlmError(f"--mode {','.join(items) or text!r}: use {' | '.join(MODES)} | all")
    return list(dict.fromkeys(items))


def parse_methods(text: str | Sequence[str], protocol: str = "fvlm") -> list[str]:
    """The methods to score: "auto" is the protocol's own (fvlm: both, reference: loglik, lmms-eval: generate);
    a method outside the protocol is an error."""
    from fvlm_cli.eval.mcq import PROTOCOL_METHODS

    if protocol not in PROTOCOL_METHODS:
        raise FvlmError(f"--protocol {protocol!r}: use {' | '.join(PROTOCOL_METHODS)}")
    allowed = PROTOCOL_METHODS[protocol]
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if items == ["auto"]:
        return list(allowed)
    if items == ["both"]:
        items = list(METHODS)
    bad = [m for m in items if m not in METHODS]
    if bad or not items:
        raise FvlmError(f"--method {','.join(items) or text!r}: use loglik | generate | both | auto")
    if off := [m for m in items if m not in allowed]:
        raise FvlmError(f"--method {off[0]}: the {protocol} protocol scores by {' and '.join(allowed)} only "
                        f"(leave --method out for its own)")
    return list(dict.fromkeys(items))


def resolve_data(name: str, data_paths: Optional[dict] = None) -> Path | str:
    """The shard set of benchmark `name`: --data NAME=SET, else the defaults; DataError saying what was looked for.

    A set given as a URL, `pipe:` command, `hf://` path or glob/brace pattern is passed on as it is: the shard
    reader opens it (and says what is wrong with it)."""
    given = {(_norm(k)): v for k, v in (data_paths or {}).items()}
    if _norm(name) in given:
        candidates, explicit = [given[_norm(name)]], True
    else:
        candidates, explicit = DEFAULT_DATA.get(name, [f"data/{name}"]), False
    for c in candidates:
        if explicit and (is_remote(str(c)) or any(ch in str(c) for ch in "*?[{")):
            return str(c)
        p = Path(c).expanduser()
        if p.exists():
            return p
    hint = _PRECOMPUTE_HINT.get(name, f"`fvlm precompute {name} --input ... --out data/{name}`")
    looked = ", ".join(str(c) for c in candidates)
    how = "" if explicit else f", or pass --data {name}=DIR"
    raise DataError(f"no shards for benchmark {name!r}: looked for {looked}; build them with {hint}{how}")


# ---------------------------------------------------------------- results

def git_revision() -> Optional[str]:
    """`git rev-parse HEAD` of the fvlm source tree, or None (not a checkout, no git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_results(out: Path, results: dict) -> None:
    from fvlm_cli.eval.report import render_results_md

    _write_json_atomic(out / "results.json", results)
    (out / "results.md").write_text(render_results_md(results, per_category=True))


def run_bench(names: Sequence[str], lm, *, modes: Sequence[str] = MODES, methods: Sequence[str] | str = "auto",
              protocol: str = "fvlm", limit: Optional[int] = None, out_dir: str | Path = "runs/bench",
              order: Optional[str] = None, data_paths: Optional[dict] = None, batch_size: int = 8,
              max_new_tokens: int = 8, caption_max_new_tokens: int = 64, meteor: bool = True,
              answer_format: str = "letter", val_loss_stage: int = 2, config: Optional[dict] = None,
              progress: bool = True, ranks=None) -> dict:
    """Run benchmarks `names` with a loaded model (`load_model`) and return the results dict (results.json).

    `ranks` (eval/schedule.Ranks): this process's share under torchrun; only rank 0 writes results.json and
    results.md and returns the full results (other ranks return {})."""
    from fvlm_cli.eval.runners import Run, run_caption, run_mcq, run_val_loss
    from fvlm_cli.eval.schedule import Ranks, SampleStore, finalise
    from fvlm_cli.progress import Progress

    ranks = ranks or Ranks()
    names = resolve_names(names, protocol)
    modes, methods = parse_modes(modes), parse_methods(methods, protocol)
    if limit is not None and limit < 1:
        raise FvlmError(f"--limit {limit}: give a positive number of questions")
    if answer_format not in ("letter", "text"):
        raise FvlmError(f"answer_format {answer_format!r}: use letter or text")
    order = order or lm.chat.order
    if order not in ("video_first", "question_first"):
        raise FvlmError(f"--order {order!r}: use video_first or question_first")
    paths = {n: resolve_data(n, data_paths) for n in names}  # every path checked before any work
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from fvlm_cli import config as cfglib

    # everything a stored row depends on: a resume in the same --out with any of it changed would mix settings
    run_id = {"model": lm.source, "order": order, "answer_format": answer_format, "protocol": protocol,
              "max_new_tokens": max_new_tokens, "caption_max_new_tokens": caption_max_new_tokens,
              "val_loss_stage": val_loss_stage, "dtype": str(next(lm.model.parameters()).dtype).replace("torch.", ""),
              "media": cfglib.to_dict(lm.media)}
    run_id = json.loads(json.dumps(run_id))  # as results.json will hold it (tuples become lists)
    old = _previous(out, run_id, {n: str(p) for n, p in paths.items()})
    if config is None:
        config = {"benchmarks": names, "protocol": protocol, "modes": modes, "methods": methods, "limit": limit,
                  "out": str(out), "order": order, "data": {n: str(p) for n, p in paths.items()},
                  "batch_size": batch_size, "max_new_tokens": max_new_tokens,
                  "caption_max_new_tokens": caption_max_new_tokens, "meteor": meteor, "answer_format": answer_format,
                  "val_loss_stage": val_loss_stage}
    results = _header(lm, run_id, config, old)
    if ranks.main:
        write_results(out, results)
    ranks.barrier()  # every rank sees the checked out dir before appending rows
    store = SampleStore(out, ranks)
    prefix = "fvlm bench" if ranks.world == 1 else f"fvlm bench rank {ranks.rank}/{ranks.world}"
    bars = Progress(progress and (ranks.main or ranks.world > 1), prefix=prefix, unit="q")
    run = Run(lm, store, bars, ranks, modes, methods, protocol=protocol, limit=limit, order=order,
              batch_size=batch_size, max_new_tokens=max_new_tokens, caption_max_new_tokens=caption_max_new_tokens,
              meteor=meteor, answer_format=answer_format, val_loss_stage=val_loss_stage)
    runners = {"mcq": run_mcq, "caption": run_caption, "loss": run_val_loss}
    was_training = lm.model.training
    lm.model.eval()
    try:
        for name in names:
            res = runners[BENCHMARKS[name]](run, name, paths[name])
            if ranks.main:
                results["benchmarks"][name] = res
                write_results(out, results)
    finally:
        bars.close()
        store.close()
        lm.model.train(was_training)
    ranks.barrier()
    if ranks.main:
        finalise(out, run.plan, modes, methods)
    return results if ranks.main else {}


def _previous(out: Path, run_id: dict, data: dict) -> dict:
    """The results.json already in `out` (resume); FvlmError when it belongs to a differently set-up run (any
    `run_id` field, or a benchmark's --data path, differs)."""
    old = {}
    if (out / "results.json").exists():
        try:
            old = json.loads((out / "results.json").read_text())
        except ValueError:
            old = {}
        prev = dict(old.get("run") or {})
        if prev:
            prev.setdefault("protocol", "fvlm")  # results written before protocols existed
            for k, v in run_id.items():  # fields added later: results written before them are not refused
                prev.setdefault(k, v)
            diff = [f"{k} {prev.get(k)!r} there vs {v!r} now" for k, v in run_id.items() if prev.get(k) != v]
            before = (old.get("config") or {}).get("data") or {}
            diff += [f"{n} data {before[n]!r} there vs {p!r} now" for n, p in data.items()
                     if n in before and before[n] != p]
            if diff:
                raise FvlmError(f"{out} holds results of another run ({'; '.join(diff)}); use a new --out or remove "
                                f"that directory")
    return old


def _header(lm, run_id: dict, config: dict, old: dict) -> dict:
    from fvlm_cli import __version__
    from fvlm_cli import config as cfglib

    return {
        "model": lm.source,
        "model_info": {"preset": lm.model_cfg.name, "parameters": lm.model.num_parameters(), "weights": lm.naming,
                       "model_config": {k: v for k, v in cfglib.to_dict(lm.model_cfg).items()
                                        if k not in ("llm_config", "dino_config")},
                       "media": cfglib.to_dict(lm.media), "chat": cfglib.to_dict(lm.chat)},
        "run": run_id,
        "config": config,
        "fvlm_version": __version__,
        "git_revision": git_revision(),
        "device": str(lm.model.device),
        "dtype": str(next(lm.model.parameters()).dtype).replace("torch.", ""),
        "benchmarks": dict(old.get("benchmarks") or {}),
    }


def run_config(cfg: BenchConfig, *, progress: bool = True) -> dict:
    """Load `cfg.model` and run `cfg.benchmarks` (what the CLI does; under torchrun, this rank's share)."""
    from fvlm_cli import config as cfglib
    from fvlm_cli.eval.schedule import ranks_from_env
    from fvlm_cli.model.build import load_model

    names = resolve_names(cfg.benchmarks, cfg.protocol)
    modes, methods = parse_modes(cfg.mode), parse_methods(cfg.method, cfg.protocol)
    for n in names:  # fail on a missing shard dir before loading (maybe downloading) the model
        resolve_data(n, cfg.data)
    ranks = ranks_from_env()
    device = cfg.device
    if ranks.world > 1 and device in ("auto", "cuda"):
        import torch

        device = f"cuda:{ranks.local}" if torch.cuda.is_available() else "cpu"
    import torch

    torch.manual_seed(0)  # a preset's random initialisation is the same in every rank (and every run)
    lm = load_model(cfg.model, device=device, dtype=cfg.dtype)
    return run_bench(names, lm, modes=modes, methods=methods, protocol=cfg.protocol, limit=cfg.limit,
                     out_dir=cfg.out, order=cfg.order, data_paths=cfg.data, batch_size=cfg.batch_size,
                     max_new_tokens=cfg.max_new_tokens, caption_max_new_tokens=cfg.caption_max_new_tokens,
                     meteor=cfg.meteor, answer_format=cfg.answer_format, val_loss_stage=cfg.val_loss_stage,
                     config=cfglib.to_dict(cfg), progress=progress, ranks=ranks)
