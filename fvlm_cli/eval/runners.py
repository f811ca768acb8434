"""The three kinds of benchmark `fvlm bench` runs: MCQ (any protocol), captioning, val-loss.

Each runner scores this rank's questions that samples.jsonl does not hold yet (eval/schedule.py), flushing
rows question by question, and returns the benchmark's aggregate from every row once all ranks are done
(only rank 0 aggregates; the others return None).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from fvlm_cli.errors import DataError
from fvlm_cli.eval.schedule import (BrokenFrames, Item, Ranks, SampleStore, count_samples, index_items, iter_todo,
                                    precompute_failures)


@dataclass
class Run:
    """What every runner needs: the model, where rows go, progress, and the run's options."""

    lm: Any
    store: SampleStore
    bars: Any                    # fvlm_cli.progress.Progress
    ranks: Ranks
    modes: Sequence[str]
    methods: Sequence[str]
    protocol: str = "fvlm"
    limit: Optional[int] = None
    order: str = "video_first"
    batch_size: int = 8
    max_new_tokens: int = 8
    caption_max_new_tokens: int = 64
    meteor: bool = True
    answer_format: str = "letter"
    val_loss_stage: int = 2
    plan: list = None            # [(benchmark, [question ids])]: samples.jsonl's canonical order

    def __post_init__(self):
        if self.plan is None:
            self.plan = []

    def done(self, name: str, it: Item, modes: Sequence[str], methods: Sequence[str]) -> bool:
        return all(self.store.done(name, m, me, it.uid) for m in modes for me in methods)

    def start(self, name: str, items: list[Item], methods: Sequence[str]) -> list[Item]:
        """Progress bars for this rank's share; returns the share's items still to score."""
        mine = [it for i, it in enumerate(items) if self.ranks.mine(i)]
        for m in self.modes:
            self.bars.add(f"{name} · {m}", len(mine), sum(self.done(name, it, [m], methods) for it in mine))
        return [it for it in mine if not self.done(name, it, self.modes, methods)]

    def finish(self) -> bool:
        """Wait for every rank; True on the rank that aggregates (with every rank's rows loaded)."""
        self.ranks.barrier()
        if self.ranks.main:
            self.store.reload()
        return self.ranks.main


def prompt_turns(record: dict) -> list[dict]:
    """The conversation up to (not including) the final assistant answer."""
    msgs = list(record.get("messages") or [])
    while msgs and msgs[-1].get("role") == "assistant":
        msgs.pop()
    return msgs


def _check_mcq(item: Item, bench: str) -> None:
    """Options and answer letter present and consistent (checked for every selected question before any work)."""
    from fvlm_cli.eval.letters import letter

    rec = item.record
    options, answer = rec.get("options"), str(rec.get("answer", "")).strip().upper()
    if not isinstance(options, list) or len(options) < 2:
        raise DataError(f"{bench}: sample {item.uid} ({item.shard}) has no options list; not an MCQ shard (SPEC §3.2)")
    if answer not in [letter(k) for k in range(len(options))]:
        raise DataError(f"{bench}: sample {item.uid} has answer {rec.get('answer')!r}, not one of its "
                        f"{len(options)} option letters")


def _question(item: Item, frames, bench: str):
    from fvlm_cli.eval.mcq import Question

    rec = item.record
    cluster = None if rec.get("cluster") is None else str(rec["cluster"])
    is_image = (rec.get("media_type") or ("image" if len(frames) == 1 else "video")) == "image" and len(frames) == 1
    return Question(item.uid, prompt_turns(rec), [str(o) for o in rec["options"]], str(rec["answer"]).strip().upper(),
                    frames, str(rec.get("category") or "uncategorized"), cluster, is_image=is_image,
                    question=str(rec.get("question") or ""), bench=bench,
                    doc_question=str((rec.get("meta") or {}).get("doc_question") or ""))


def run_mcq(run: Run, name: str, path: Path) -> Optional[dict]:
    from fvlm_cli.eval.mcq import frame_policy, score_questions
    from fvlm_cli.eval.stats import chance_accuracy
    from fvlm_cli.eval.summary import facets, mcq_leaf

    lm, store = run.lm, run.store
    unreadable: list[str] = []
    items = index_items(path, "mcq", name, unreadable)
    if run.protocol == "lmms-eval" and name == "scienceqa":  # lmms-eval's scienceqa_img: questions with an image
        items = [it for it in items if int(it.record.get("frame_count") or 0) > 0]
        if not items:
            raise DataError(f"{name}: no question with an image in {path} (lmms-eval scores scienceqa_img)")
    items = items[: run.limit]
    for it in items:
        _check_mcq(it, name)
    run.plan.append((name, [it.uid for it in items]))
    todo = run.start(name, items, run.methods)
    for chunk in iter_todo(path, todo, run.batch_size, lm.model.image_size):
        chunk = _record_broken(run, name, chunk, run.methods)
        if not chunk:
            continue
        t0 = time.perf_counter()
        questions = [_question(it, frames, name) for it, frames in chunk]
        t_read = time.perf_counter() - t0
        pending = {m: sum(not run.done(name, it, [m], run.methods) for it, _ in chunk) for m in run.modes}
        need_modes = [m for m in run.modes if pending[m]]
        need_methods = [me for me in run.methods if any(not run.done(name, it, need_modes, [me]) for it, _ in chunk)]
        rows = score_questions(lm, questions, modes=need_modes, methods=need_methods, protocol=run.protocol,
                               order=run.order, answer_format=run.answer_format, max_new_tokens=run.max_new_tokens,
                               extra_seconds=t_read)
        by_id: dict[str, list[dict]] = {}
        for r in rows:
            by_id.setdefault(r["id"], []).append(r)
        for q, (it, _) in zip(questions, chunk):  # flushed question by question
            extra = {"facets": f} if (f := facets(it.record)) else {}
            store.add([{"benchmark": name, "id": q.id, "mode": r["mode"], "method": r["method"],
                        "category": q.category, "cluster": q.cluster, "options": q.options, **extra,
                        **{k: v for k, v in r.items() if k not in ("id", "mode", "method")}} for r in by_id[q.id]])
        for m in need_modes:
            run.bars.advance(f"{name} · {m}", pending[m])
    if not run.finish():
        return None
    items, excluded = _split_excluded(store, name, items, run.modes[0], run.methods[0])
    chance = chance_accuracy([len(it.record["options"]) for it in items])
    policy = frame_policy(run.protocol, lm.media.image_frames)
    result: dict = {"data": str(path), "questions": len(items), "chance": chance, "protocol": run.protocol,
                    "frame_policy": policy, **_exclusions(excluded, unreadable, path)}
    for m in run.modes:
        result[m] = {me: mcq_leaf(name, [store.get(name, m, me, it.uid) for it in items], protocol=run.protocol,
                                  method=me, frame_policy=policy, chance=chance) for me in run.methods}
    return result


def _record_broken(run: Run, name: str, chunk: list, methods) -> list:
    """Store an excluded row (every mode x method) for each question whose frames do not decode; the rest."""
    good = []
    for it, frames in chunk:
        if isinstance(frames, BrokenFrames):
            run.store.add([{"benchmark": name, "id": it.uid, "mode": m, "method": me, "excluded": frames.reason}
                           for m in run.modes for me in methods])
            for m in run.modes:
                run.bars.advance(f"{name} · {m}", 1)
        else:
            good.append((it, frames))
    return good


def _split_excluded(store, name: str, items: list, mode: str, method: str) -> tuple[list, list]:
    """(the scored items, [(item, reason)] for those recorded as excluded)."""
    scored, excluded = [], []
    for it in items:
        row = store.get(name, mode, method, it.uid)
        if "excluded" in row:
            excluded.append((it, row["excluded"]))
        else:
            scored.append(it)
    return scored, excluded


def _exclusions(excluded: list, unreadable: list, path: Path) -> dict:
    """What the result leaves out, said in results.json: questions whose frames did not decode, samples the shard
    reader could not read, and the inputs `fvlm precompute` failed on (not in the shards at all)."""
    out: dict = {}
    if excluded:
        out["excluded"] = {"questions": len(excluded), "examples": [f"{it.uid}: {why}" for it, why in excluded[:3]]}
    if unreadable:
        out["unreadable_samples"] = {"count": len(unreadable), "examples": unreadable[:3]}
    if n := precompute_failures(path):
        out["precompute_failures"] = n
    return out


def run_caption(run: Run, name: str, path: Path) -> Optional[dict]:
    from fvlm_cli.data.media import replicate
    from fvlm_cli.eval.captioning import score_captions
    from fvlm_cli.eval.mcq import encode_prompts, score_fast, stop_ids

    lm, store = run.lm, run.store
    model, tok = lm.model, lm.tokenizer
    unreadable: list[str] = []
    items = index_items(path, "caption", name, unreadable)[: run.limit]
    refs = {}
    for it in items:
        msgs = it.record.get("messages") or []
        ref = next((str(m.get("content") or "") for m in reversed(msgs) if m.get("role") == "assistant"), "")
        if not ref.strip():
            raise DataError(f"{name}: caption sample {it.uid} ({it.shard}) has no assistant caption to score against")
        refs[it.uid] = [ref]
    run.plan.append((name, [it.uid for it in items]))
    todo = run.start(name, items, ["generate"])
    stops = stop_ids(tok)
    for chunk in iter_todo(path, todo, run.batch_size, model.image_size):
        chunk = _record_broken(run, name, chunk, ["generate"])
        if not chunk:
            continue
        t0 = time.perf_counter()
        pending = {m: sum(not store.done(name, m, "generate", it.uid) for it, _ in chunk) for m in run.modes}
        need = [m for m in run.modes if pending[m]]
        prompts = [prompt_turns(it.record) or [{"role": "user", "content": lm.chat.default_prompt}] for it, _ in chunk]
        clips = [replicate(f, lm.media.image_frames) if it.record.get("media_type") != "video" else f for it, f in chunk]
        batch = encode_prompts(prompts, clips, tok, system_prompt=lm.chat.system_prompt, order=run.order).to(model.device)
        t_read = time.perf_counter() - t0
        timings: dict = {}
        out = score_fast(model, batch, need, loglik=False, max_new_tokens=run.caption_max_new_tokens, stops=stops,
                         pad_id=int(tok.pad_token_id or 0), timings=timings)
        for b, (it, _) in enumerate(chunk):
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
            run.bars.advance(f"{name} · {m}", pending[m])
    if not run.finish():
        return None
    items, excluded = _split_excluded(store, name, items, run.modes[0], "generate")
    result: dict = {"data": str(path), "questions": len(items), **_exclusions(excluded, unreadable, path)}
    for m in run.modes:
        recs = [store.get(name, m, "generate", it.uid) for it in items]
        leaf = score_captions({it.uid: r["prediction"] for it, r in zip(items, recs)}, refs, meteor=run.meteor)
        leaf["seconds"] = sum(r.get("seconds", 0.0) for r in recs)
        result[m] = {"generate": leaf}
    return result


def run_val_loss(run: Run, name: str, path: Path) -> Optional[dict]:
    """Token-weighted NLL per mode; under several ranks rank 0 scores every sample (the others wait)."""
    if not run.ranks.main:
        run.finish()
        return None
    import torch

    from fvlm_cli.data.loader import build_eval_loader
    from fvlm_cli.eval.loss import model_inputs, to_device
    from fvlm_cli.settings import RunConfig

    lm, store = run.lm, run.store
    model = lm.model
    cfg = RunConfig(model=lm.model_cfg, media=lm.media, chat=lm.chat)
    cfg.data.batch_size = run.batch_size
    loader = build_eval_loader(str(path), lm.tokenizer, cfg, stage=run.val_loss_stage, limit=run.limit,
                               order=run.order)
    total = count_samples(path)
    total = min(total, run.limit) if run.limit is not None else total
    for m in run.modes:
        run.bars.add(f"{name} · {m}", total)
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
        need = [m for m in run.modes if any(not store.done(name, m, "loss", u) for u in ids)]
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
        for m in run.modes:
            run.bars.advance(f"{name} · {m}", len(ids))
        t_last = time.perf_counter()
    run.finish()
    run.plan.append((name, uids))
    if not uids:
        raise DataError(f"{name}: no usable samples in {path} (every answer truncated, or no text)")
    result: dict = {"data": str(path), "questions": len(uids)}
    for m in run.modes:
        recs = [store.get(name, m, "loss", u) for u in uids]
        tokens = sum(r["tokens"] for r in recs)
        result[m] = {"loss": {"loss": sum(r["nll"] for r in recs) / max(tokens, 1), "tokens": tokens,
                              "seconds": sum(r["seconds"] for r in recs)}}
    if "coarse_fine" in run.modes and "coarse_only" in run.modes and result["coarse_only"]["loss"]["loss"] > 0:
        result["fine_coarse_ratio"] = result["coarse_fine"]["loss"]["loss"] / result["coarse_only"]["loss"]["loss"]
    return result
