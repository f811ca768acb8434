"""`fvlm bench`: benchmarks in the three modes, resumable, written to results.json / samples.jsonl / results.md.

    lm = load_model("runs/stage2")
    results = run_bench(["mvbench", "synthetic"], lm, modes=MODES, methods=("loglik", "generate"),
                        out_dir="runs/bench", data_paths={"synthetic": "data/synth/bench"})

Benchmarks (SPEC §5) and what they read:
  mvbench, video-mme, pope, scienceqa, mlvu, synthetic   MCQ shards (`fvlm precompute NAME`, kind mcq), scored by
        log-likelihood of each option and/or by greedy generation + letter extraction (eval/mcq.py: DINO once
        per question for all options, modes and methods). POPE adds precision/recall/F1/yes-ratio.
  captioning   caption shards (kind caption; the reference is the assistant message): greedy captions scored with
        CIDEr-D, BLEU-4, ROUGE-L and METEOR (METEOR only where Java exists; the notes say when it was skipped).
        Method "generate" whatever --method says.
  val-loss     any SFT shards through the evaluation loader: token-weighted mean NLL of the answer tokens per mode
        (what `evaluate_loss` computes, kept per sample here so a run can resume). Method "loss".

Outputs in `out_dir`:
  samples.jsonl  one line per benchmark x question x mode x method, appended and flushed question by question.
  results.json   {"model", "model_info", "run", "config", "fvlm_version", "git_revision", "benchmarks":
                  {bench: {"chance", "data", "questions", mode: {method: leaf}}}} (leaf: eval/report.py), rewritten
                  after every benchmark.
  results.md     render_results_md(results).
Resume: re-running with the same out_dir skips every (benchmark, mode, method, question id) already in
samples.jsonl and recomputes all aggregates from it; a half-written last line (a kill mid-write) is dropped.
Aggregates cover exactly the questions this invocation selected (its --limit), wherever their rows came from.
A question id that repeats within a benchmark gets a "#k" suffix on its later occurrences, so keys stay unique.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Sequence

from fvlm_cli.config import field
from fvlm_cli.errors import DataError, FvlmError

MODES = ("coarse_only", "coarse_fine", "autoregressive")
METHODS = ("loglik", "generate")

# name -> kind of shards it reads
BENCHMARKS = {
    "val-loss": "loss", "mvbench": "mcq", "video-mme": "mcq", "pope": "mcq", "scienceqa": "mcq", "mlvu": "mcq",
    "captioning": "caption", "synthetic": "mcq",
}
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


@dataclass
class BenchConfig:
    """Everything `fvlm bench` reads (the --config YAML schema; flags override it)."""

    benchmarks: list[str] = field([], help=f"benchmark names: {', '.join(BENCHMARKS)}")
    model: str = field("sanps/fVLM-135M", help="Hub id, model folder, checkpoint, run dir, or preset")
    mode: str = field("all", help="coarse_only | coarse_fine | autoregressive | all (or a comma list)")
    method: str = field("both", help="MCQ scoring: loglik | generate | both")
    limit: Optional[int] = field(None, help="first N questions (samples) of each benchmark")
    out: str = field("runs/bench", help="output dir (results.json, samples.jsonl, results.md); re-run to resume")
    order: Optional[Literal["video_first", "question_first"]] = field(None, help="prompt order (default: the model's)")
    data: dict[str, str] = field({}, help="shard dir per benchmark name (default: data/<name>)")
    batch_size: int = field(8, help="questions scored together")
    max_new_tokens: int = field(8, help="MCQ generate: answer length cap")
    caption_max_new_tokens: int = field(64, help="captioning: caption length cap")
    meteor: bool = field(True, help="captioning: compute METEOR (needs Java; one JVM start per mode)")
    answer_format: Literal["letter", "text"] = field("letter", help="loglik continuation: the option letter or its text")
    val_loss_stage: int = field(2, help="val-loss targets: 1 = all text tokens, 2/3 = answer tokens + <|im_end|>")
    device: str = field("auto", help="auto | cpu | cuda | cuda:N")
    dtype: str = field("auto", help="auto | bf16 | fp32")


# ---------------------------------------------------------------- names, modes, paths

def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def resolve_names(names: Sequence[str]) -> list[str]:
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
    return out


def parse_modes(text: str | Sequence[str]) -> list[str]:
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if items == ["all"]:
        return list(MODES)
    bad = [m for m in items if m not in MODES]
    if bad or not items:
        raise FvlmError(f"--mode {','.join(items) or text!r}: use {' | '.join(MODES)} | all")
    return list(dict.fromkeys(items))


def parse_methods(text: str | Sequence[str]) -> list[str]:
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if items == ["both"]:
        return list(METHODS)
    bad = [m for m in items if m not in METHODS]
    if bad or not items:
        raise FvlmError(f"--method {','.join(items) or text!r}: use loglik | generate | both")
    return list(dict.fromkeys(items))


def resolve_data(name: str, data_paths: Optional[dict] = None) -> Path:
    """The shard dir of benchmark `name`: --data NAME=DIR, else the defaults; DataError saying what was looked for."""
    given = {(_norm(k)): v for k, v in (data_paths or {}).items()}
    if _norm(name) in given:
        candidates, explicit = [given[_norm(name)]], True
    else:
        candidates, explicit = DEFAULT_DATA.get(name, [f"data/{name}"]), False
    for c in candidates:
        p = Path(c).expanduser()
        if p.exists():
            return p
    hint = _PRECOMPUTE_HINT.get(name, f"`fvlm precompute {name} --input ... --out data/{name}`")
    looked = ", ".join(str(c) for c in candidates)
    how = "" if explicit else f", or pass --data {name}=DIR"
    raise DataError(f"no shards for benchmark {name!r}: looked for {looked}; build them with {hint}{how}")


# ---------------------------------------------------------------- samples.jsonl

class SampleStore:
    """samples.jsonl: append-only rows keyed (benchmark, mode, method, id); earlier rows are never rewritten."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows: dict[tuple, dict] = {}
        if self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):  # a kill mid-write: drop the partial line before appending
                keep = data.rfind(b"\n") + 1
                with open(self.path, "r+b") as f:
                    f.truncate(keep)
                data = data[:keep]
            for line in data.decode("utf-8").splitlines():
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                self.rows[self.key(row)] = row
        self._f = open(self.path, "a", encoding="utf-8")

    @staticmethod
    def key(row: dict) -> tuple:
        return row["benchmark"], row["mode"], row["method"], row["id"]

    def done(self, *key) -> bool:
        return tuple(key) in self.rows

    def get(self, *key) -> Optional[dict]:
        return self.rows.get(tuple(key))

    def add(self, rows: Sequence[dict]) -> None:
        """Append rows (skipping keys already stored) and flush: one call per question."""
        for row in rows:
            k = self.key(row)
            if k in self.rows:
                continue
            self.rows[k] = row
            self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


# ---------------------------------------------------------------- progress

class Bars:
    """One rich bar per benchmark x mode on a terminal (stderr); plain lines every `every` s otherwise."""

    def __init__(self, enabled: bool = True, every: float = 10.0, prefix: str = "fvlm bench"):
        self.enabled, self.every, self.prefix = enabled, every, prefix
        self.tasks: dict[str, dict] = {}
        self._rich = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._rich = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                  console=Console(stderr=True), transient=False)
            self._rich.start()

    def add(self, label: str, total: int, completed: int = 0) -> None:
        t = {"label": label, "total": total, "done": completed, "t0": time.time(), "last": time.time(), "start": completed}
        if self._rich is not None:
            t["id"] = self._rich.add_task(label, total=total, completed=completed)
        self.tasks[label] = t
        if completed and self._rich is None and self.enabled:
            self._log(t, "resuming")

    def advance(self, label: str, n: int = 1) -> None:
        t = self.tasks[label]
        t["done"] += n
        if self._rich is not None:
            self._rich.update(t["id"], completed=t["done"])
        elif self.enabled and (time.time() - t["last"] >= self.every or t["done"] >= t["total"]):
            t["last"] = time.time()
            self._log(t)

    def _log(self, t: dict, note: str = "") -> None:
        rate = (t["done"] - t["start"]) / max(time.time() - t["t0"], 1e-9)
        eta = f", ETA {(t['total'] - t['done']) / rate:.0f} s" if rate > 0 and t["done"] < t["total"] else ""
        extra = f" ({note})" if note else ""
        print(f"[{self.prefix}] {t['label']}: {t['done']}/{t['total']}{extra}, {rate:.2f}/s{eta}", file=sys.stderr,
              flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None


# ---------------------------------------------------------------- reading shards

@dataclass
class _Item:
    uid: str
    loc: Any      # data.loader.SampleLoc
    record: dict


def _items(path: Path, kind: str, bench: str) -> list[_Item]:
    """The samples of `kind` in the shards at `path`, in stored order, with unique ids."""
    from fvlm_cli.data.loader import discover_shards, index_shard, read_record

    out, seen, kinds = [], {}, {}
    for shard in discover_shards(path):
        for loc in index_shard(shard):
            rec = read_record(loc)
            k = rec.get("kind", "?")
            kinds[k] = kinds.get(k, 0) + 1
            if k != kind:
                continue
            sid = str(rec.get("id", loc.key))
            n = seen.get(sid, 0)
            seen[sid] = n + 1
            out.append(_Item(sid if n == 0 else f"{sid}#{n}", loc, rec))
    if not out:
        found = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())) or "no samples"
        raise DataError(f"{bench}: the shards at {path} hold no {kind} samples ({found}); "
                        f"give the {bench} shards with --data {bench}=DIR")
    return out


def _frames(item: _Item, image_size: int, image_frames: int):
    """[T, S, S, 3] uint8; an image (media_type image, or one frame without media_type) replicated."""
    from fvlm_cli.data.loader import decode_frames
    from fvlm_cli.data.media import replicate

    frames = decode_frames(item.loc, image_size)
    media_type = item.record.get("media_type") or ("image" if len(frames) == 1 else "video")
    if media_type == "image" and len(frames) == 1:
        frames = replicate(frames, image_frames)
    return frames


def _prompt_turns(record: dict) -> list[dict]:
    """The conversation up to (not including) the final assistant answer."""
    msgs = list(record.get("messages") or [])
    while msgs and msgs[-1].get("role") == "assistant":
        msgs.pop()
    return msgs


def _check_mcq(item: _Item, bench: str) -> None:
    """Options and answer letter present and consistent (checked for every selected question before any work)."""
    from fvlm_cli.eval.letters import letter

    rec = item.record
    options, answer = rec.get("options"), str(rec.get("answer", "")).strip().upper()
    if not isinstance(options, list) or len(options) < 2:
        raise DataError(f"{bench}: sample {item.uid} ({item.loc.shard}) has no options list; not an MCQ shard (SPEC §3.2)")
    if answer not in [letter(k) for k in range(len(options))]:
        raise DataError(f"{bench}: sample {item.uid} has answer {rec.get('answer')!r}, not one of its "
                        f"{len(options)} option letters")


def _question(item: _Item, image_size: int, image_frames: int):
    from fvlm_cli.eval.mcq import Question

    rec = item.record
    cluster = None if rec.get("cluster") is None else str(rec["cluster"])
    return Question(item.uid, _prompt_turns(rec), [str(o) for o in rec["options"]], str(rec["answer"]).strip().upper(),
                    _frames(item, image_size, image_frames), str(rec.get("category") or "uncategorized"), cluster)


def _chunks(seq: Sequence, n: int) -> Iterator[Sequence]:
    for i in range(0, len(seq), max(1, n)):
        yield seq[i : i + max(1, n)]


# ---------------------------------------------------------------- the benchmarks

def _run_mcq(name, path, lm, store, bars, *, modes, methods, limit, order, batch_size, max_new_tokens,
             answer_format) -> dict:
    from fvlm_cli.eval.letters import index as letter_index
    from fvlm_cli.eval.mcq import predicted_text, score_questions
    from fvlm_cli.eval.stats import accuracy_summary, chance_accuracy, pope_metrics

    items = _items(path, "mcq", name)[:limit]
    for it in items:
        _check_mcq(it, name)
    size, reps = lm.model.image_size, lm.media.image_frames

    def done(it, modes_, methods_) -> bool:
        return all(store.done(name, m, me, it.uid) for m in modes_ for me in methods_)

    for m in modes:
        bars.add(f"{name} · {m}", len(items), sum(done(it, [m], methods) for it in items))
    todo = [it for it in items if not done(it, modes, methods)]
    for chunk in _chunks(todo, batch_size):
        t0 = time.perf_counter()
        questions = [_question(it, size, reps) for it in chunk]
        t_read = time.perf_counter() - t0
        pending = {m: sum(not done(it, [m], methods) for it in chunk) for m in modes}
        need_modes = [m for m in modes if pending[m]]
        need_methods = [me for me in methods if any(not done(it, need_modes, [me]) for it in chunk)]
        rows = score_questions(lm, questions, modes=need_modes, methods=need_methods, order=order,
                               answer_format=answer_format, max_new_tokens=max_new_tokens, extra_seconds=t_read)
        by_id: dict[str, list[dict]] = {}
        for r in rows:
            by_id.setdefault(r["id"], []).append(r)
        for q in questions:  # flushed question by question
            store.add([{"benchmark": name, "id": q.id, "mode": r["mode"], "method": r["method"],
                        "category": q.category, "cluster": q.cluster, "options": q.options,
                        **{k: v for k, v in r.items() if k not in ("id", "mode", "method")}} for r in by_id[q.id]])
        for m in need_modes:
            bars.advance(f"{name} · {m}", pending[m])
    result: dict = {"data": str(path), "questions": len(items),
                    "chance": chance_accuracy([len(it.record["options"]) for it in items])}
    for m in modes:
        result[m] = {}
        for me in methods:
            recs = [store.get(name, m, me, it.uid) for it in items]
            leaf = accuracy_summary(recs)
            leaf["seconds"] = sum(r.get("seconds", 0.0) for r in recs)
            leaf["chance"] = result["chance"]
            if name == "pope":
                truths = [r["options"][letter_index(r["truth"])] for r in recs]
                pope = pope_metrics([predicted_text(r, r["options"]) for r in recs], truths)
                leaf.update({k: pope[k] for k in ("precision", "recall", "f1", "yes_ratio")})
            result[m][me] = leaf
    return result


def _run_caption(name, path, lm, store, bars, *, modes, limit, order, batch_size, max_new_tokens, meteor) -> dict:
    from fvlm_cli.eval.captioning import score_captions
    from fvlm_cli.eval.mcq import encode_prompts, score_fast, stop_ids

    model, tok = lm.model, lm.tokenizer
    items = _items(path, "caption", name)[:limit]
    refs = {}
    for it in items:
        msgs = it.record.get("messages") or []
        ref = next((str(m.get("content") or "") for m in reversed(msgs) if m.get("role") == "assistant"), "")
        if not ref.strip():
            raise DataError(f"{name}: caption sample {it.uid} ({it.loc.shard}) has no assistant caption to score against")
        refs[it.uid] = [ref]
    for m in modes:
        bars.add(f"{name} · {m}", len(items), sum(store.done(name, m, "generate", it.uid) for it in items))
    todo = [it for it in items if not all(store.done(name, m, "generate", it.uid) for m in modes)]
    stops = stop_ids(tok)
    for chunk in _chunks(todo, batch_size):
        t0 = time.perf_counter()
        pending = {m: sum(not store.done(name, m, "generate", it.uid) for it in chunk) for m in modes}
        need = [m for m in modes if pending[m]]
        prompts = [_prompt_turns(it.record) or [{"role": "user", "content": lm.chat.default_prompt}] for it in chunk]
        batch = encode_prompts(prompts,
                               [_frames(it, model.image_size, lm.media.image_frames) for it in chunk], tok,
                               system_prompt=lm.chat.system_prompt, order=order).to(model.device)
        t_read = time.perf_counter() - t0
        timings: dict = {}
        out = score_fast(model, batch, need, loglik=False, max_new_tokens=max_new_tokens, stops=stops,
                         pad_id=int(tok.pad_token_id or 0), timings=timings)
        for b, it in enumerate(chunk):
            rows = []
            for m in need:
                secs = ((t_read + timings["dino"]) / len(need) + timings[f"prefix/{m}"]
                        + timings[f"generate/{m}"]) / len(chunk)
                ids = [i for i in out[m]["generated"][b] if i not in stops]
                text = tok.decode(ids, skip_special_tokens=True).strip()
                rows.append({"benchmark": name, "id": it.uid, "mode": m, "method": "generate", "prediction": text,
                             "references": refs[it.uid], "seconds": secs})
            store.add(rows)
        for m in need:
            bars.advance(f"{name} · {m}", pending[m])
    result: dict = {"data": str(path), "questions": len(items)}
    for m in modes:
        recs = [store.get(name, m, "generate", it.uid) for it in items]
        leaf = score_captions({it.uid: r["prediction"] for it, r in zip(items, recs)}, refs, meteor=meteor)
        leaf["seconds"] = sum(r.get("seconds", 0.0) for r in recs)
        result[m] = {"generate": leaf}
    return result


def _run_val_loss(name, path, lm, store, bars, *, modes, limit, order, batch_size, stage) -> dict:
    import torch

    from fvlm_cli.data.loader import build_eval_loader, discover_shards, index_shard
    from fvlm_cli.eval.loss import model_inputs, to_device
    from fvlm_cli.settings import RunConfig

    model = lm.model
    cfg = RunConfig(model=lm.model_cfg, media=lm.media, chat=lm.chat)
    cfg.data.batch_size = batch_size
    loader = build_eval_loader(str(path), lm.tokenizer, cfg, stage=stage, limit=limit, order=order)
    total = sum(len(index_shard(s)) for s in discover_shards(path))
    total = min(total, limit) if limit is not None else total
    for m in modes:
        bars.add(f"{name} · {m}", total)
    uids: list[str] = []
    seen: dict[str, int] = {}
    t_last = time.perf_counter()
    for batch in loader:
        ids = []
        for sid in batch["ids"]:
            n = seen.get(sid, 0)
            seen[sid] = n + 1
            ids.append(sid if n == 0 else f"{sid}#{n}")
        uids += ids
        need = [m for m in modes if any(not store.done(name, m, "loss", u) for u in ids)]
        b = to_device(batch, model.device)
        t_read = time.perf_counter() - t_last
        rows: dict[str, list] = {u: [] for u in ids}
        for m in need:
            t0 = time.perf_counter()
            with torch.no_grad():
                r = model(**model_inputs(b), mode=m, return_logits=False)
            nll, cnt = (-r["logps"]).tolist(), r["n_targets"].tolist()
            secs = (time.perf_counter() - t0 + t_read / len(need)) / len(ids)
            for u, x, k in zip(ids, nll, cnt):
                rows[u].append({"benchmark": name, "id": u, "mode": m, "method": "loss", "nll": x, "tokens": int(k),
                                "seconds": secs})
        for u in ids:
            store.add(rows[u])
        for m in modes:
            bars.advance(f"{name} · {m}", len(ids))
        t_last = time.perf_counter()
    if not uids:
        raise DataError(f"{name}: no usable samples in {path} (every answer truncated, or no text)")
    result: dict = {"data": str(path), "questions": len(uids)}
    for m in modes:
        recs = [store.get(name, m, "loss", u) for u in uids]
        tokens = sum(r["tokens"] for r in recs)
        result[m] = {"loss": {"loss": sum(r["nll"] for r in recs) / max(tokens, 1), "tokens": tokens,
                              "seconds": sum(r["seconds"] for r in recs)}}
    if "coarse_fine" in modes and "coarse_only" in modes and result["coarse_only"]["loss"]["loss"] > 0:
        result["fine_coarse_ratio"] = result["coarse_fine"]["loss"]["loss"] / result["coarse_only"]["loss"]["loss"]
    return result


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


def run_bench(names: Sequence[str], lm, *, modes: Sequence[str] = MODES, methods: Sequence[str] = METHODS,
              limit: Optional[int] = None, out_dir: str | Path = "runs/bench", order: Optional[str] = None,
              data_paths: Optional[dict] = None, batch_size: int = 8, max_new_tokens: int = 8,
              caption_max_new_tokens: int = 64, meteor: bool = True, answer_format: str = "letter",
              val_loss_stage: int = 2, config: Optional[dict] = None, progress: bool = True) -> dict:
    """Run benchmarks `names` with a loaded model (`load_model`) and return the results dict (results.json)."""
    from fvlm_cli import __version__
    from fvlm_cli import config as cfglib

    names = resolve_names(names)
    modes, methods = parse_modes(modes), parse_methods(methods)
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
    run = {"model": lm.source, "order": order, "answer_format": answer_format}
    old = {}
    if (out / "results.json").exists():
        try:
            old = json.loads((out / "results.json").read_text())
        except ValueError:
            old = {}
        if old.get("run") and old["run"] != run:
            diff = ", ".join(f"{k} {old['run'].get(k)!r} there vs {v!r} now" for k, v in run.items() if old["run"].get(k) != v)
            raise FvlmError(f"{out} holds results of another run ({diff}); use a new --out or remove that directory")
    if config is None:
        config = {"benchmarks": names, "modes": modes, "methods": methods, "limit": limit, "out": str(out),
                  "order": order, "data": {n: str(p) for n, p in paths.items()}, "batch_size": batch_size,
                  "max_new_tokens": max_new_tokens, "caption_max_new_tokens": caption_max_new_tokens, "meteor": meteor,
                  "answer_format": answer_format, "val_loss_stage": val_loss_stage}
    results = {
        "model": lm.source,
        "model_info": {"preset": lm.model_cfg.name, "parameters": lm.model.num_parameters(), "weights": lm.naming,
                       "model_config": {k: v for k, v in cfglib.to_dict(lm.model_cfg).items()
                                        if k not in ("llm_config", "dino_config")},
                       "media": cfglib.to_dict(lm.media), "chat": cfglib.to_dict(lm.chat)},
        "run": run,
        "config": config,
        "fvlm_version": __version__,
        "git_revision": git_revision(),
        "device": str(lm.model.device),
        "dtype": str(next(lm.model.parameters()).dtype).replace("torch.", ""),
        "benchmarks": dict(old.get("benchmarks") or {}),
    }
    write_results(out, results)
    store = SampleStore(out / "samples.jsonl")
    bars = Bars(progress)
    was_training = lm.model.training
    lm.model.eval()
    try:
        for name in names:
            kind = BENCHMARKS[name]
            if kind == "mcq":
                res = _run_mcq(name, paths[name], lm, store, bars, modes=modes, methods=methods, limit=limit,
                               order=order, batch_size=batch_size, max_new_tokens=max_new_tokens,
                               answer_format=answer_format)
            elif kind == "caption":
                res = _run_caption(name, paths[name], lm, store, bars, modes=modes, limit=limit, order=order,
                                   batch_size=batch_size, max_new_tokens=caption_max_new_tokens, meteor=meteor)
            else:
                res = _run_val_loss(name, paths[name], lm, store, bars, modes=modes, limit=limit, order=order,
                                    batch_size=batch_size, stage=val_loss_stage)
            results["benchmarks"][name] = res
            write_results(out, results)
    finally:
        bars.close()
        store.close()
        lm.model.train(was_training)
    return results


def run_config(cfg: BenchConfig, *, progress: bool = True) -> dict:
    """Load `cfg.model` and run `cfg.benchmarks` (what the CLI does)."""
    from fvlm_cli import config as cfglib
    from fvlm_cli.model.build import load_model

    names = resolve_names(cfg.benchmarks)
    modes, methods = parse_modes(cfg.mode), parse_methods(cfg.method)
    for n in names:  # fail on a missing shard dir before loading (maybe downloading) the model
        resolve_data(n, cfg.data)
    lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    return run_bench(names, lm, modes=modes, methods=methods, limit=cfg.limit, out_dir=cfg.out, order=cfg.order,
                     data_paths=cfg.data, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                     caption_max_new_tokens=cfg.caption_max_new_tokens, meteor=cfg.meteor, answer_format=cfg.answer_format,
                     val_loss_stage=cfg.val_loss_stage, config=cfglib.to_dict(cfg), progress=progress)
