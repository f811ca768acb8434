"""The training and evaluation loaders (SPEC §3.5): shards -> mixed, tokenised, padded batches.

    loader = build_train_loader(cfg, tokenizer, stage=2, rank=rank, world_size=world)   # endless
    it = iter(loader)
    for step in range(steps):
        batch = next(it)                     # every rank takes exactly `steps` batches
    state = loader.state_dict()              # save with the checkpoint (one per rank)
    ...
    loader = build_train_loader(...); loader.load_state_dict(state)   # -> the very next batch of the old run

    for batch in build_eval_loader("shards/val", tokenizer, cfg, stage=2, limit=64): ...   # finite, fixed

Batch (B samples, T = most frames in the batch, 0 when all are text-only; L = longest text):
    frames          float [B, T, 3, S, S]  ImageNet-normalised (media.frames_to_tensor), zeros where padded
    frame_mask      bool  [B, T]           True for real frames
    input_ids       long  [B, L]           right-padded with the pad id
    attention_mask  long  [B, L]
    loss_mask       long  [B, L]           1 = prediction target (chat.py); the ignore label is -100 downstream
    visual_pos      long  [B]              visual tokens go before text index visual_pos
    ids, sources    list[str]
DPO batches carry chosen_{input_ids,attention_mask,loss_mask,visual_pos} and rejected_{...} sharing `frames`.

How samples are read (SPEC §3.5, §3.7): through the one shard reader, `data/shards.py` (webdataset's tar
iterators and openers: local files, http(s), pipe:, hf://; retries, cache, sha256). This module only samples,
mixes, batches and resumes; `data/readers.py` holds one reader's view of one shard set (epochs, the split over
ranks x workers, block shuffles, cursors) and the elastic-resume plan.
- Each shard set is an endless sequence of epochs; each shard is read by exactly one (rank, worker) reader per
  epoch (or, with fewer shards than readers, each reader keeps every readers-th sample). The split is done
  there, once; there is no separate node splitter that could split the shards a second time (SPEC §10).
- The mixture draws the next sample's set deterministically from (seed, reader number, draw number): with
  probability `data.text_fraction` a text set (`data.text`, by weight), else a training set (`data.train`, by
  weight). Text-only samples travel like any other (T = 0); none is dropped for lacking frames (SPEC §10).
- Each sample is put in question_first order with probability `chat.question_first_ratio` (when that is 0:
  all samples in `chat.order`), drawn from the same deterministic stream.
- Images (json "media_type" == "image", or one frame and no media_type) are replicated to
  `media.image_frames` frames when `data.replicate_images`.
- Samples whose answer is fully truncated at `data.max_text_tokens` are dropped and counted (`loader.dropped`);
  unreadable samples (no/garbled json, undecodable JPEG) are skipped and counted (`loader.corrupt`); a shard
  whose bytes are bad (a broken tar, fewer samples than the manifest says) keeps the samples read
  before the damage and the rest of it is skipped, logged and counted (`loader.corrupt_shards`); a local file
  is not retried for that, a remote one after its retries. Network failures still stop the run after theirs.
- Batches close at `data.batch_size` samples or, with `data.frame_budget` > 0, as soon as adding the next
  sample would make the padded frame count (B x T) exceed the budget (a lone sample over budget still forms
  its batch).
- DPO loaders (dpo=True) read only `data.train`: text retention is an SFT notion.

Exact resume: torchdata's `StatefulDataLoader` keeps each worker's state (its cursor: per-set epoch / block
start / position, mixture draw count; `ShardMixture.state_dict`) and which worker hands out the next batch
(in-order round robin); restored, the next batch is the one the uninterrupted loader would have produced, with
no replay of earlier samples. That needs the same data.num_workers and world size. Each batch also carries its
cursor in-band, so the loader knows every worker's position (counters, the trace, and elastic resume:
`load_state_dict(all ranks' states)` with another world size or worker count, see data/readers.py).

API:
    build_train_loader(cfg, tokenizer, *, stage, rank=0, world_size=1, dpo=False, epochs=None, ...) -> TrainLoader
    TrainLoader: iterable of batches; state_dict() / load_state_dict(state); .dropped, .samples, .batches, .epochs
    build_eval_loader(path, tokenizer, cfg, *, stage, limit=None, batch_size=None, order=None, dpo=False) -> EvalLoader
    collate(samples: list[Sample], *, pad_id, image_size) -> batch dict
    TrainLoader.load_state_dict(list of every rank's state): exact, or elastic on another world size / workers
    (shard reading: fvlm_cli.data.shards.resolve_shards / stream_shard / iter_shard_samples)
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fvlm_cli.data.chat import Encoded, encode_chat, encode_dpo
from fvlm_cli.data.readers import MixSet, SetReader, elastic_plan, uniform
# the one shard reader lives in data/shards.py; these names stay importable from here for older callers
from fvlm_cli.data.shards import (ShardSample, decode_frames, discover_shards, index_shard, read_record,  # noqa: F401
                                  resolve_shards)
from fvlm_cli.errors import DataError, FvlmError, TrainingError, worker_error_message

log = logging.getLogger("fvlm.data")

STATE_FORMAT = "fvlm-loader/2"


# ---------------------------------------------------------------- samples and batches


STOP_GRACE_S = 120.0  # how long a loader worker outlives a SIGTERM sent to the whole process group


def _outlive_stop_signals(worker_id: int) -> None:
    """In a training loader's worker (`train` closes the loader on every way out). A scheduler's SIGTERM (or SLURM's
    USR1 warning) reaches the whole process group, and stopping is the training process's business: it finishes its
    step, saves a checkpoint (which may need a few more batches under DDP), then shuts the workers down. So a worker
    ignores USR1 and leaves STOP_GRACE_S seconds after SIGTERM instead of at once; a worker whose parent dies exits
    by itself anyway."""
    import signal
    import threading

    def leave_later(signum, frame):
        timer = threading.Timer(STOP_GRACE_S, os._exit, (128 + signum,))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, leave_later)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


@dataclass
class _Item:  # a prepared sample: tokenised and decoded
    id: str
    source: str
    frames: np.ndarray  # [T, S, S, 3] uint8, images already replicated
    encoded: Optional[Encoded] = None
    chosen: Optional[Encoded] = None
    rejected: Optional[Encoded] = None

    @property
    def n_frames(self) -> int:
        return len(self.frames)


@dataclass
class MixtureOptions:
    stage: int = 2
    dpo: bool = False
    system_prompt: str = "You are a helpful AI assistant."
    question_first: float = 0.0     # probability of the question_first order per sample
    max_tokens: int = 512
    batch_size: int = 8
    frame_budget: int = 0
    image_size: int = 224
    image_frames: int = 8
    replicate_images: bool = True
    text_fraction: float = 0.14
    shuffle: bool = True
    block: int = 256
    seed: int = 0
    epochs: Optional[int] = None    # None: endless (training); 1: one pass (coverage, evaluation)
    limit: Optional[int] = None     # stop after this many samples per reader (evaluation)
    pad_id: int = 2
    access: Any = None              # remote.ShardAccess: retries, cache, verification


class ShardMixture(IterableDataset):
    """Yields collated batches of one reader (rank x DataLoader worker), each with a "_state" cursor."""

    def __init__(self, sets: Sequence[MixSet], tokenizer: Any, opts: MixtureOptions, *, rank: int = 0,
                 world_size: int = 1):
        if not sets:
            raise DataError("no shard sets to read (set data.train and/or data.text)")
        self.sets, self.tokenizer, self.opts = list(sets), tokenizer, opts
        self.rank, self.world = rank, world_size
        self.role_states: dict[int, dict] = {}     # set by an elastic resume: each worker's starting cursor
        self.plans: dict[str, dict] = {}           # set by an elastic resume: {set name: plan} (readers.py)
        self.trace: Optional[str] = os.environ.get("FVLM_DATA_TRACE") or None
        self._resume: Optional[dict] = None        # this worker's cursor, from StatefulDataLoader
        self._last: Optional[dict] = None          # the cursor after the last batch this worker made

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        roles, role = (info.num_workers, info.id) if info is not None else (1, 0)
        state = self._resume if self._resume is not None else self.role_states.get(role)
        self._resume = None
        for batch in self._batches(role, roles, state):
            self._last = batch["_state"]
            yield batch

    # StatefulDataLoader calls these in each worker (or in the main process with 0 workers)
    def state_dict(self) -> Optional[dict]:
        return self._last

    def load_state_dict(self, state: Optional[dict]) -> None:
        self._resume = state

    # -- the stream of one role
    def _batches(self, role: int, roles: int, state: Optional[dict]) -> Iterator[dict]:
        o = self.opts
        me = self.rank * roles + role
        readers = [SetReader(s, seed=o.seed, me=me, readers=self.world * roles, block=o.block, shuffle=o.shuffle,
                             epochs=o.epochs, access=o.access, plan=self.plans.get(s.name)) for s in self.sets]
        draw, dropped, corrupt, samples, batches = 0, 0, 0, 0, 0
        shards_before = 0  # corrupt shards skipped before a resume (the readers count this process's)
        if state is not None:
            if state.get("roles") != roles or len(state.get("sets", [])) != len(readers):
                raise TrainingError("data loader state does not match this loader (workers or shard sets changed)")
            for r, cursor in zip(readers, state["sets"]):
                r.restore(cursor)
            draw, dropped, samples, batches = state["draw"], state["dropped"], state["samples"], state["batches"]
            corrupt = state.get("corrupt", 0)
            shards_before = state.get("corrupt_shards", 0)

        def snapshot() -> dict:
            return {"role": role, "roles": roles, "sets": [dict(r.cursor) for r in readers], "draw": draw,
                    "dropped": dropped, "corrupt": corrupt, "samples": samples, "batches": batches,
                    "corrupt_shards": shards_before + sum(r.skipped_shards for r in readers)}

        def emit(items: list[_Item], snap: dict) -> dict:
            nonlocal samples, batches
            samples, batches = samples + len(items), batches + 1
            batch = collate(items, pad_id=o.pad_id, image_size=o.image_size)
            batch["_state"] = {**snap, "samples": samples, "batches": batches}
            return batch

        pending: list[_Item] = []
        while o.limit is None or samples + len(pending) < o.limit:
            snap = snapshot()  # the state before this draw: where a restored reader picks up
            sample, set_index = self._draw(readers, me, draw)
            if sample is None:
                break
            draw += 1
            try:
                item = self._prepare(sample, self.sets[set_index], me, draw - 1)
            except _Corrupt as e:
                corrupt += 1
                log.warning("%s: sample %s skipped: %s", sample.shard, sample.key, e)
                continue
            if item is None:
                dropped += 1
                continue
            if o.frame_budget > 0 and pending:
                t = max(item.n_frames, max(p.n_frames for p in pending))
                if (len(pending) + 1) * t > o.frame_budget:
                    yield emit(pending, snap)
                    pending = []
            pending.append(item)
            if len(pending) >= o.batch_size:
                yield emit(pending, snapshot())
                pending = []
        if pending:
            yield emit(pending, snapshot())
        yield {"_state": snapshot(), "_end": True}  # finite stream: final counts (drops after the last batch)

    def _draw(self, readers: list[SetReader], me: int, draw: int) -> tuple[Optional[ShardSample], int]:
        """The set of draw number `draw` (deterministic), then its reader's next sample."""
        o = self.opts
        while True:
            live = [i for i, r in enumerate(readers) if not r.done]
            if not live:
                return None, -1
            text = [i for i in live if self.sets[i].text]
            train = [i for i in live if not self.sets[i].text]
            if text and train:
                group = text if uniform("mix", o.seed, me, draw) < o.text_fraction else train
            else:
                group = text or train
            weights = [max(self.sets[i].weight, 0.0) for i in group]
            if not sum(weights):
                weights = [1.0] * len(group)
            u = uniform("set", o.seed, me, draw) * sum(weights)
            choice = group[-1]
            for i, w in zip(group, weights):
                if u < w:
                    choice = i
                    break
                u -= w
            sample = readers[choice].next()
            if sample is not None:
                return sample, choice
            # that set just finished its last epoch (finite mode): draw again among the others

    def _prepare(self, sample: ShardSample, s: MixSet, me: int, draw: int) -> Optional[_Item]:
        """Tokenise and decode; None when the answer does not survive truncation; _Corrupt when unreadable."""
        from fvlm_cli.data.media import replicate

        o = self.opts
        if sample.error:
            raise _Corrupt(sample.error)
        rec = json.loads(sample.json_bytes)
        if not isinstance(rec, dict):
            raise _Corrupt("json is not an object")
        try:
            frames = decode_frames(sample, o.image_size)
        except DataError:
            raise
        except Exception as e:  # a truncated or garbled JPEG
            raise _Corrupt(f"undecodable frame ({type(e).__name__}: {e})") from None
        n = len(frames)
        media_type = rec.get("media_type") or ("image" if n == 1 else "video")
        if o.replicate_images and media_type == "image" and n == 1 and o.image_frames > 1:
            frames = replicate(frames, o.image_frames)
        question_first = uniform("order", o.seed, me, draw) < o.question_first
        order = "question_first" if question_first else "video_first"
        sid = str(rec.get("id", sample.key))
        item = _Item(sid, str(rec.get("source", s.name)), frames)
        messages = rec.get("messages") or []
        if o.dpo:
            if rec.get("chosen") is None or rec.get("rejected") is None:
                raise DataError(f"{sample.shard}: sample {sid} has no chosen/rejected answers; "
                                f"DPO needs preference shards (kind dpo)")
            pair = encode_dpo(messages, rec["chosen"], rec["rejected"], self.tokenizer, system_prompt=o.system_prompt,
                              order=order, max_tokens=o.max_tokens)
            if pair is None:
                return None
            item.chosen, item.rejected = pair
        else:
            item.encoded = encode_chat(messages, self.tokenizer, stage=o.stage, system_prompt=o.system_prompt,
                                       order=order, max_tokens=o.max_tokens)
            if item.encoded is None:
                return None
        return item


class _Corrupt(Exception):
    """A sample that cannot be read (skipped and counted, never a crash)."""


def collate(samples: Sequence[Any], *, pad_id: int, image_size: int) -> dict:
    """Pad frames to the batch's T and text to its L (see the module docstring for the batch layout)."""
    from fvlm_cli.data.media import frames_to_tensor

    B = len(samples)
    T = max(len(s.frames) for s in samples)
    frames = torch.zeros(B, T, 3, image_size, image_size)
    frame_mask = torch.zeros(B, T, dtype=torch.bool)
    for b, s in enumerate(samples):
        t = len(s.frames)
        if t:
            frames[b, :t] = frames_to_tensor(s.frames)
            frame_mask[b, :t] = True
    batch: dict[str, Any] = {"frames": frames, "frame_mask": frame_mask,
                             "ids": [s.id for s in samples], "sources": [s.source for s in samples]}
    if samples[0].chosen is not None:
        batch.update(_pad_text([s.chosen for s in samples], pad_id, "chosen_"))
        batch.update(_pad_text([s.rejected for s in samples], pad_id, "rejected_"))
    else:
        batch.update(_pad_text([s.encoded for s in samples], pad_id, ""))
    return batch


def _pad_text(encs: Sequence[Encoded], pad_id: int, prefix: str) -> dict[str, torch.Tensor]:
    B, L = len(encs), max(len(e.input_ids) for e in encs)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    att = torch.zeros(B, L, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    for b, e in enumerate(encs):
        n = len(e.input_ids)
        ids[b, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        att[b, :n] = 1
        mask[b, :n] = torch.tensor(e.loss_mask, dtype=torch.long)
    vis = torch.tensor([e.visual_pos for e in encs], dtype=torch.long)
    return {f"{prefix}input_ids": ids, f"{prefix}attention_mask": att, f"{prefix}loss_mask": mask,
            f"{prefix}visual_pos": vis}


# ---------------------------------------------------------------- the loaders

class TrainLoader:
    """An endless (or `epochs`-long) iterable of batches with exact `state_dict` / `load_state_dict`."""

    def __init__(self, dataset: ShardMixture, *, num_workers: int = 0, pin_memory: bool = False,
                 outlive_stop_signals: bool = False):
        self.dataset, self.num_workers, self.pin_memory = dataset, max(0, num_workers), pin_memory
        # training's loader: its workers outlive a process-group SIGTERM while the trainer saves (then closes them)
        self.outlive_stop_signals = outlive_stop_signals
        self._iter: Optional[Iterator[dict]] = None
        self._dl: Any = None                  # torchdata StatefulDataLoader
        self._dl_iter: Any = None
        self._dl_state: Optional[dict] = None  # its state to restore before iterating
        self._delivered = 0
        self._roles: dict[int, dict] = {}
        self.resumed: Optional[dict] = None   # after load_state_dict: {"elastic": bool, ...} for the log

    @property
    def _n_roles(self) -> int:
        return max(1, self.num_workers)

    def __iter__(self) -> Iterator[dict]:
        if self._iter is None:
            from torchdata.stateful_dataloader import StatefulDataLoader

            if self.num_workers:
                os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers are forked
            # in order (the default): batch i comes from worker i % W; the loader's state records each worker's
            # cursor and which worker is next, so a restored loader continues with the very next batch
            with warnings.catch_warnings():  # torchdata 0.11 calls torch.set_vital, deprecated in torch 2.13
                warnings.filterwarnings("ignore", message=".*set_vital.*")
                dl = StatefulDataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                                        pin_memory=self.pin_memory, persistent_workers=False,
                                        worker_init_fn=_outlive_stop_signals if self.outlive_stop_signals else None)
            if self._dl_state is not None:
                dl.load_state_dict(self._dl_state)
            self._dl = dl
            self._iter = self._dl_iter = iter(dl)
        while True:
            try:
                batch = next(self._iter)
            except StopIteration:
                return
            except FvlmError as e:  # raised in a worker: torch wraps the message in a traceback
                self.close()
                raise type(e)(worker_error_message(e)) from None
            state = batch.pop("_state")
            self._roles[state["role"]] = state
            if batch.pop("_end", False):  # a finished reader's final counts, not a batch
                continue
            self._delivered += 1
            if self.dataset.trace:
                self._trace(batch, state)
            yield batch

    def _trace(self, batch: dict, state: dict) -> None:
        """FVLM_DATA_TRACE=DIR: one line per delivered batch in DIR/rank{R}.jsonl (which samples each rank read)."""
        os.makedirs(self.dataset.trace, exist_ok=True)
        with open(os.path.join(self.dataset.trace, f"rank{self.dataset.rank}.jsonl"), "a") as f:
            f.write(json.dumps({"batch": self._delivered, "role": state["role"], "ids": batch["ids"],
                                "epochs": [c["epoch"] for c in state["sets"]]}) + "\n")

    def state_dict(self) -> dict:
        """The data position after the batches delivered so far (JSON-serialisable; one per rank)."""
        return {"format": STATE_FORMAT, "batches": self._delivered, "num_workers": self.num_workers,
                "rank": self.dataset.rank, "world_size": self.dataset.world,
                "sets": [s.name for s in self.dataset.sets], "data": self._fingerprint(), "plans": self.dataset.plans,
                "roles": {str(r): s for r, s in sorted(self._roles.items())},
                "dataloader": self._dl.state_dict() if self._dl is not None else self._dl_state}

    def _fingerprint(self) -> dict:
        """What a saved position is only valid for: the shuffle settings and each set's shards (file names and
        manifest counts; moving the data elsewhere keeps them)."""
        import hashlib

        o = self.dataset.opts

        def shards(s) -> str:
            rows = sorted((u.rstrip("/").rsplit("/", 1)[-1], s.counts.get(u)) for u in s.shards)
            return f"{len(rows)}:" + hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]

        return {"seed": o.seed, "shuffle": o.shuffle, "shuffle_buffer": o.block,
                **{f"shards of {s.name}": shards(s) for s in self.dataset.sets}}

    def load_state_dict(self, state: dict | list) -> None:
        """Continue after `state` (call before iterating).

        `state`: this rank's state (exact continuation only), or the list of every rank's states as saved in a
        checkpoint: the same world size and workers continue exactly; other ones resume elastically (the rest
        of the current epoch is read exactly once, then normal epochs; see data/readers.py)."""
        if self._iter is not None:
            raise TrainingError("load the data loader state before iterating over the loader")
        states = state if isinstance(state, list) else [state]
        if not states or not all(isinstance(s, dict) and s.get("format") == STATE_FORMAT for s in states):
            raise TrainingError("not an fvlm data loader state (or one saved by an older fvlm)")
        names = [s.name for s in self.dataset.sets]
        if states[0].get("sets") != names:
            raise TrainingError(f"data loader state was saved with shard sets {states[0].get('sets')}, this run has "
                                f"{names}: resume with the same data.train / data.text lists")
        saved, now = states[0].get("data"), self._fingerprint()
        if saved is not None and saved != now:  # older states carry none: not checked
            what = [k for k in now if saved.get(k) != now[k]]
            raise TrainingError(
                f"the data changed since this checkpoint ({', '.join(what)}): its position would land on other "
                f"samples. Resume with the same shards, data.seed and data.shuffle_buffer, or continue on the new "
                f"data as a new run (--set train.init_from=<this run dir> --out <new dir>)")
        exact = (len(states) == self.dataset.world and states[0].get("world_size") == self.dataset.world
                 and states[0].get("num_workers") == self.num_workers
                 and all("dataloader" in s for s in states))  # saved before StatefulDataLoader: map elastically
        if not isinstance(state, list):
            mine = {"num_workers": self.num_workers, "rank": self.dataset.rank, "world_size": self.dataset.world}
            for key, value in mine.items():
                if state.get(key) != value:
                    raise TrainingError(f"data loader state was saved with {key}={state.get(key)!r}, this run has "
                                        f"{value!r}: pass every rank's state to resume elastically")
            exact = True
        if exact:
            st = states[0] if not isinstance(state, list) else states[self.dataset.rank]
            self._delivered = int(st["batches"])
            self._roles = {int(r): s for r, s in st["roles"].items()}
            self._dl_state = st.get("dataloader")
            self.dataset.plans = dict(st.get("plans") or {})
            self.resumed = {"elastic": False}
            return
        self._load_elastic(states)

    def _load_elastic(self, states: list[dict]) -> None:
        o = self.dataset.opts
        plans, summaries = {}, []
        for i, s in enumerate(self.dataset.sets):
            plans[s.name], summary = elastic_plan(s, i, states, seed=o.seed, block=o.block, shuffle=o.shuffle,
                                                  access=o.access)
            summaries.append(summary)
        self.dataset.plans = plans
        self._delivered, self._dl_state = 0, None
        roles = self._n_roles
        totals = {k: sum(r.get(k, 0) for st in states for r in st["roles"].values())
                  for k in ("dropped", "corrupt", "corrupt_shards", "samples")}
        draw = max((r["draw"] for st in states for r in st["roles"].values()), default=0)
        self._roles = {}
        for role in range(roles):  # fresh cursors at the plan's epoch; the old totals kept on rank 0 worker 0
            first = self.dataset.rank == 0 and role == 0
            self._roles[role] = {"role": role, "roles": roles, "draw": draw, "batches": 0,
                                 "sets": [{"epoch": plans[s.name]["epoch"], "shard": 0, "offset": 0, "index": 0,
                                           "pos": 0} for s in self.dataset.sets],
                                 **{k: (v if first else 0) for k, v in totals.items()}}
        self.dataset.role_states = dict(self._roles)
        self.resumed = {"elastic": True, "from": f"{len(states)} rank(s) x {states[0]['num_workers']} worker(s)",
                        "to": f"{self.dataset.world} rank(s) x {self.num_workers} worker(s)", "sets": summaries}

    @property
    def batches(self) -> int:
        return self._delivered

    @property
    def samples(self) -> int:
        return sum(s["samples"] for s in self._roles.values())

    @property
    def dropped(self) -> int:
        """Samples dropped so far because their answer was fully truncated (as of the delivered batches)."""
        return sum(s["dropped"] for s in self._roles.values())

    @property
    def corrupt(self) -> int:
        """Unreadable samples skipped so far (no/garbled json, undecodable frames)."""
        return sum(s.get("corrupt", 0) for s in self._roles.values())

    @property
    def corrupt_shards(self) -> int:
        """Shards whose bytes turned out bad (broken tar, short of the manifest's count): the rest of each was
        skipped."""
        return sum(s.get("corrupt_shards", 0) for s in self._roles.values())

    @property
    def epochs(self) -> dict[str, int]:
        """Per shard set: the epoch its slowest reader is in."""
        out: dict[str, int] = {}
        for st in self._roles.values():
            for s, cursor in zip(self.dataset.sets, st["sets"]):
                out[s.name] = min(out.get(s.name, cursor["epoch"]), cursor["epoch"])
        return out

    def close(self) -> None:
        """Stop the worker processes (a closed loader cannot be iterated again)."""
        if self._dl is not None:
            try:  # keep the position: state_dict() still answers after close
                self._dl_state = self._dl.state_dict()
            except Exception:
                pass
            self._dl = None
        dl_iter, self._dl_iter = self._dl_iter, None
        self._iter = iter(())
        shutdown = getattr(dl_iter, "_shutdown_workers", None)  # now: a suspended generator may still hold the loader
        if shutdown is not None:
            shutdown()
        del dl_iter


class EvalLoader:
    """A finite, fixed sequence of batches (sorted shards, stored order, single process); re-iterable."""

    def __init__(self, dataset: ShardMixture):
        self.dataset = dataset
        self.dropped = 0

    def __iter__(self) -> Iterator[dict]:
        for batch in self.dataset._batches(0, 1, None):
            self.dropped = batch.pop("_state")["dropped"]
            if not batch.pop("_end", False):
                yield batch


def shard_access(data: Any) -> Any:
    """How shards are opened, from a DataConfig (retries, backoff, cache, verification)."""
    from fvlm_cli.data.remote import ShardAccess

    return ShardAccess(retries=getattr(data, "retries", 5), backoff=getattr(data, "retry_backoff", 1.0),
                       cache_dir=getattr(data, "cache_dir", None), verify=getattr(data, "verify", False))


def _set(name: str, path: str, access: Any, **kw: Any) -> MixSet:
    ref = resolve_shards(path, access)
    return MixSet(name, ref.urls, path=str(path), counts=ref.counts, sha256=ref.sha256, **kw)


def _options(cfg: Any, tokenizer: Any, *, stage: int, dpo: bool) -> MixtureOptions:
    chat, data = cfg.chat, cfg.data
    qf = chat.question_first_ratio if chat.question_first_ratio > 0 else float(chat.order == "question_first")
    return MixtureOptions(
        stage=stage, dpo=dpo, system_prompt=chat.system_prompt, question_first=qf, max_tokens=data.max_text_tokens,
        batch_size=data.batch_size, frame_budget=data.frame_budget, image_size=cfg.model.image_size,
        image_frames=cfg.media.image_frames, replicate_images=data.replicate_images, text_fraction=data.text_fraction,
        block=data.shuffle_buffer, seed=data.seed, pad_id=int(tokenizer.pad_token_id), access=shard_access(data))


def build_train_loader(cfg: Any, tokenizer: Any, *, stage: int, rank: int = 0, world_size: int = 1, dpo: bool = False,
                       epochs: Optional[int] = None, num_workers: Optional[int] = None,
                       pin_memory: bool = False, outlive_stop_signals: bool = False) -> TrainLoader:
    """The training stream of one rank from `cfg` (a RunConfig): `data.train` mixed by weight, `data.text` drawn
    with probability `data.text_fraction`. Endless unless `epochs` is given (1 = one pass: every sample once)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    opts = _options(cfg, tokenizer, stage=stage, dpo=dpo)
    opts.epochs = epochs
    sets = [_set(f"train{i}", s.path, opts.access, weight=s.weight) for i, s in enumerate(cfg.data.train)]
    if not dpo:
        sets += [_set(f"text{i}", s.path, opts.access, weight=s.weight, text=True) for i, s in enumerate(cfg.data.text)]
    workers = cfg.data.num_workers if num_workers is None else num_workers
    readers = world_size * max(1, workers)
    for s in sets:
        if len(s.shards) < readers:
            log.warning("shard set %s (%s): %d shard(s) for %d readers (ranks x workers): sample-level split, every "
                        "reader scans all its shards", s.name, s.path, len(s.shards), readers)
    return TrainLoader(ShardMixture(sets, tokenizer, opts, rank=rank, world_size=world_size),
                       num_workers=workers, pin_memory=pin_memory, outlive_stop_signals=outlive_stop_signals)


def build_eval_loader(path: str, tokenizer: Any, cfg: Any, *, stage: int, limit: Optional[int] = None,
                      batch_size: Optional[int] = None, order: Optional[str] = None, dpo: bool = False) -> EvalLoader:
    """The first `limit` samples (after truncation drops) of the shards at `path`, in stored order, in batches.

    `order` (video_first | question_first) defaults to chat.order; no mixing, so the set is the same every time."""
    opts = _options(cfg, tokenizer, stage=stage, dpo=dpo)
    order = order or cfg.chat.order
    opts.question_first = 1.0 if order == "question_first" else 0.0
    opts.shuffle, opts.epochs, opts.limit = False, 1, limit
    if batch_size is not None:
        opts.batch_size = batch_size
    return EvalLoader(ShardMixture([_set("eval", path, opts.access)], tokenizer, opts))
