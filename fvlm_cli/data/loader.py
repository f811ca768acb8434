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

How samples are read (shards written as SPEC §3.2, local files):
- A shard set is a directory (its manifest.json shard list, else *.tar), a glob, or a brace pattern.
- Each shard set is an endless sequence of epochs. Epoch e orders the sorted shard list by a shuffle seeded
  with (seed, e) -- the same on every rank -- then takes the rank slice, then the worker slice: each shard is
  read by exactly one (rank, worker) per epoch. The split is done here, once; there is no separate node
  splitter that could split the shards a second time (SPEC §10).
- When a set has fewer shards than ranks x workers it falls back to sample-level splitting: every reader walks
  all shards of the epoch and keeps every (ranks x workers)-th sample. Still each sample exactly once per
  epoch, but each reader reads the set's headers, so give large sets at least that many shards.
- Samples are shuffled in blocks of `data.shuffle_buffer` consecutive samples of a reader's stream. Tar
  headers are indexed once per shard and members are read by offset, so a block holds positions, not bytes.
- The mixture draws the next sample's set deterministically from (seed, rank, worker, draw number): with
  probability `data.text_fraction` a text set (`data.text`, by weight), else a training set (`data.train`, by
  weight). Text-only samples travel like any other (T = 0); none is dropped for lacking frames (SPEC §10).
- Each sample is put in question_first order with probability `chat.question_first_ratio` (when that is 0:
  all samples in `chat.order`), drawn from the same deterministic stream.
- `data.resample` is not used: the endless epoch stream already gives every rank the same number of steps.
- Images (json "media_type" == "image", or one frame and no media_type) are replicated to
  `media.image_frames` frames when `data.replicate_images`.
- Samples whose answer is fully truncated at `data.max_text_tokens` are dropped and counted (`loader.dropped`).
- Batches close at `data.batch_size` samples or, with `data.frame_budget` > 0, as soon as adding the next
  sample would make the padded frame count (B x T) exceed the budget (a lone sample over budget still forms
  its batch).
- DPO loaders (dpo=True) read only `data.train`: text retention is an SFT notion.

Exact resume: each batch carries its reader's cursor (per-set epoch / block start / position, mixture draw
count); the loader keeps the latest cursor per worker and the number of batches delivered. A torch DataLoader
over an IterableDataset hands out batches round-robin over its workers, so after n batches worker slot w plays
the role of worker (w + n) mod W on restore, from that role's cursor: the next batch is the one the
uninterrupted loader would have produced, with no replay of earlier samples. The state is exact for the same
data.num_workers, rank and world size (checked on load).

API:
    build_train_loader(cfg, tokenizer, *, stage, rank=0, world_size=1, dpo=False, epochs=None, ...) -> TrainLoader
    TrainLoader: iterable of batches; state_dict() / load_state_dict(state); .dropped, .samples, .batches, .epochs
    build_eval_loader(path, tokenizer, cfg, *, stage, limit=None, batch_size=None, order=None, dpo=False) -> EvalLoader
    collate(samples: list[Sample], *, pad_id, image_size) -> batch dict
    discover_shards(spec) -> list[str]; index_shard(path) -> tuple[SampleLoc, ...] (header scan, cached)
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
import random
import re
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fvlm_cli.data.chat import Encoded, encode_chat, encode_dpo
from fvlm_cli.errors import DataError, FvlmError, TrainingError

log = logging.getLogger("fvlm.data")

STATE_FORMAT = "fvlm-loader/1"
_FRAME_RE = re.compile(r"^(\d+)\.(jpg|jpeg|png)$")


# ---------------------------------------------------------------- shard discovery

def discover_shards(spec: str | Path) -> list[str]:
    """The tar files of a shard set: a directory (manifest.json list, else *.tar, else shards/*.tar), a single
    tar, a glob (`data/*.tar`) or a brace pattern (`data/shard-{000..009}.tar`). Sorted; DataError if none."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        from fvlm_cli.data.shards import shard_paths

        paths = [str(p) for p in shard_paths(path)]
        if not paths and (path / "shards").is_dir():
            paths = [str(p) for p in sorted((path / "shards").glob("*.tar"))]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise DataError(f"{path}: manifest lists {len(missing)} missing shard(s), e.g. {missing[0]}")
    elif path.is_file():
        paths = [str(path)]
    else:
        paths = []
        for pattern in _expand_braces(spec):
            hits = sorted(glob.glob(os.path.expanduser(pattern)))
            if not hits and not re.search(r"[*?\[]", pattern) and "{" in spec:
                raise DataError(f"shard {pattern} (from {spec}) does not exist")
            paths += hits
        paths = sorted(set(paths))
    if not paths:
        raise DataError(f"no shards found at {spec!r} (a shard directory, a .tar, a glob or a brace pattern)")
    return paths


def _expand_braces(pattern: str) -> list[str]:
    """`a{1..3}b{x,y}` -> a1bx a1by ... ; numeric ranges keep zero padding (`{000..010}`)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        a, b = rng.group(1), rng.group(2)
        width = len(a) if a.startswith("0") else 0
        step = 1 if int(b) >= int(a) else -1
        items = [str(i).zfill(width) for i in range(int(a), int(b) + step, step)]
    else:
        items = body.split(",")
    return [p for item in items for p in _expand_braces(head + item + tail)]


# ---------------------------------------------------------------- shard index: positions, not bytes

@dataclass(frozen=True)
class SampleLoc:
    """Where one sample's members lie in its tar: (offset, size) of the json and of each frame, in order."""

    shard: str
    key: str
    json: tuple[int, int]
    frames: tuple[tuple[int, int], ...]


@lru_cache(maxsize=64)
def index_shard(path: str) -> tuple[SampleLoc, ...]:
    """Scan a tar's headers (no member data is read) and group members by WebDataset key."""
    groups: dict[str, dict] = {}
    order: list[str] = []
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                folder, _, base = m.name.rpartition("/")
                stem, _, ext = base.partition(".")
                key = f"{folder}/{stem}" if folder else stem
                if key not in groups:
                    groups[key] = {}
                    order.append(key)
                groups[key][ext] = (m.offset_data, m.size)
    except (OSError, tarfile.TarError) as e:
        raise DataError(f"{path}: unreadable shard ({e})") from None
    out = []
    for key in order:
        members = groups[key]
        if "json" not in members:
            raise DataError(f"{path}: sample {key} has no json member")
        frames = sorted((int(mt.group(1)), loc) for ext, loc in members.items() if (mt := _FRAME_RE.match(ext)))
        out.append(SampleLoc(path, key, members["json"], tuple(loc for _, loc in frames)))
    return tuple(out)


def _read(path: str, spans: Sequence[tuple[int, int]]) -> list[bytes]:
    with open(path, "rb") as f:
        out = []
        for offset, size in spans:
            f.seek(offset)
            out.append(f.read(size))
    return out


def read_record(loc: SampleLoc) -> dict:
    try:
        return json.loads(_read(loc.shard, [loc.json])[0])
    except ValueError as e:
        raise DataError(f"{loc.shard}: sample {loc.key} has an unreadable json ({e})") from None


def decode_frames(loc: SampleLoc, image_size: int) -> np.ndarray:
    """[T, S, S, 3] uint8 from the sample's JPEGs (T = 0 for text-only)."""
    from PIL import Image

    frames = []
    for data in _read(loc.shard, loc.frames):
        img = Image.open(io.BytesIO(data)).convert("RGB")
        if img.size != (image_size, image_size):
            raise DataError(f"{loc.shard}: sample {loc.key} has {img.size[0]}x{img.size[1]} frames but the model "
                            f"reads {image_size}x{image_size}; precompute with that image size or set model.image_size")
        frames.append(np.asarray(img))
    if not frames:
        return np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    return np.stack(frames)


# ---------------------------------------------------------------- deterministic randomness

def _digest(*keys: Any) -> int:
    return int.from_bytes(hashlib.blake2b(repr(keys).encode(), digest_size=8).digest(), "little")


def _uniform(*keys: Any) -> float:
    """A uniform [0, 1) number that depends only on `keys` (not on process, hash seed or call order)."""
    return _digest(*keys) / 2.0 ** 64


# ---------------------------------------------------------------- one shard set, as one reader sees it

@dataclass
class MixSet:
    name: str            # "train0", "text0", ...: seeds the shuffles, so moving the data keeps the order
    shards: list[str]
    weight: float = 1.0
    text: bool = False   # a text-retention set (drawn with probability text_fraction)
    path: str = ""       # as configured, for messages


class _SetReader:
    """A reader's (rank, worker) stream of one shard set: endless epochs (or `epochs`), block-shuffled.

    Cursor: epoch, the block's start (shard position in this reader's epoch list, sample offset in that shard,
    sample index in the epoch) and the position inside the block. Everything else is recomputed from it.
    """

    def __init__(self, s: MixSet, *, seed: int, rank: int, world: int, role: int, roles: int,
                 block: int, shuffle: bool, epochs: Optional[int]):
        self.set, self.seed, self.rank, self.world, self.role, self.roles = s, seed, rank, world, role, roles
        self.block, self.shuffle, self.epochs = max(1, block), shuffle, epochs
        self.readers, self.me = world * roles, rank * roles + role
        self.by_shard = len(s.shards) >= self.readers
        self.cursor = {"epoch": 0, "shard": 0, "offset": 0, "index": 0, "pos": 0}
        self._block: Optional[list[SampleLoc]] = None
        self._block_end: tuple[int, int, int] = (0, 0, 0)
        self._epoch_cache: tuple[int, list[str]] = (-1, [])

    @property
    def done(self) -> bool:
        return self.epochs is not None and self.cursor["epoch"] >= self.epochs

    def epoch_shards(self, epoch: int) -> list[str]:
        if self._epoch_cache[0] != epoch:
            order = sorted(self.set.shards)
            if self.shuffle:  # same permutation on every rank: the slices below partition it
                random.Random(_digest("epoch", self.seed, self.set.name, epoch)).shuffle(order)
            if self.by_shard:
                order = order[self.rank::self.world][self.role::self.roles]
            self._epoch_cache = (epoch, order)
        return self._epoch_cache[1]

    def restore(self, cursor: dict) -> None:
        self.cursor = dict(cursor)
        self._block = None

    def next(self) -> Optional[SampleLoc]:
        """The next sample location, or None when the last epoch is finished."""
        c = self.cursor
        while not self.done:
            if self._block is None:
                self._load_block()
            if c["pos"] < len(self._block):
                loc = self._block[c["pos"]]
                c["pos"] += 1
                return loc
            shard, offset, index = self._block_end
            fresh_epoch = c["shard"] == 0 and c["offset"] == 0
            if shard >= len(self.epoch_shards(c["epoch"])):
                if self.epochs is None and fresh_epoch and not self._block:  # would loop forever
                    raise DataError(
                        f"shard set {self.set.path or self.set.name} gives no samples to rank {self.rank} worker "
                        f"{self.role} ({len(self.set.shards)} shard(s) for {self.readers} readers): write more "
                        f"samples or use fewer data.num_workers / ranks")
                c.update(epoch=c["epoch"] + 1, shard=0, offset=0, index=0, pos=0)
            else:
                c.update(shard=shard, offset=offset, index=index, pos=0)
            self._block = None
        return None

    def _load_block(self) -> None:
        c = self.cursor
        shards = self.epoch_shards(c["epoch"])
        shard, offset, index = c["shard"], c["offset"], c["index"]
        block: list[SampleLoc] = []
        while shard < len(shards) and len(block) < self.block:
            locs = index_shard(shards[shard])
            while offset < len(locs) and len(block) < self.block:
                if self.by_shard or index % self.readers == self.me:
                    block.append(locs[offset])
                offset += 1
                index += 1
            if offset >= len(locs):
                shard, offset = shard + 1, 0
        if self.shuffle:
            random.Random(_digest("block", self.seed, self.set.name, self.rank, self.role, c["epoch"],
                                  c["shard"], c["offset"])).shuffle(block)
        self._block, self._block_end = block, (shard, offset, index)


# ---------------------------------------------------------------- samples and batches

@dataclass
class Sample:
    """One decoded sample, ready for `collate`. frames: [T, S, S, 3] uint8 (T = 0 for text-only)."""

    id: str
    source: str
    frames: np.ndarray
    encoded: Optional[Encoded] = None
    chosen: Optional[Encoded] = None
    rejected: Optional[Encoded] = None


@dataclass
class _Item:  # a prepared, not yet decoded, sample
    id: str
    source: str
    loc: SampleLoc
    n_frames: int       # after image replication
    replicate: int      # image_frames when this is an image to replicate, else 0
    encoded: Optional[Encoded] = None
    chosen: Optional[Encoded] = None
    rejected: Optional[Encoded] = None


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


class ShardMixture(IterableDataset):
    """Yields collated batches of one reader (rank x DataLoader worker), each with a "_state" cursor."""

    def __init__(self, sets: Sequence[MixSet], tokenizer: Any, opts: MixtureOptions, *, rank: int = 0,
                 world_size: int = 1):
        if not sets:
            raise DataError("no shard sets to read (set data.train and/or data.text)")
        self.sets, self.tokenizer, self.opts = list(sets), tokenizer, opts
        self.rank, self.world = rank, world_size
        self.role_offset = 0                       # set on resume: worker w plays role (w + offset) % W
        self.role_states: dict[int, dict] = {}     # set on resume: each role's cursor

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        roles, wid = (info.num_workers, info.id) if info is not None else (1, 0)
        role = (wid + self.role_offset) % roles
        return self._batches(role, roles, self.role_states.get(role))

    # -- the stream of one role
    def _batches(self, role: int, roles: int, state: Optional[dict]) -> Iterator[dict]:
        o = self.opts
        readers = [_SetReader(s, seed=o.seed, rank=self.rank, world=self.world, role=role, roles=roles,
                              block=o.block, shuffle=o.shuffle, epochs=o.epochs) for s in self.sets]
        draw, dropped, samples, batches = 0, 0, 0, 0
        if state is not None:
            if state.get("roles") != roles or len(state.get("sets", [])) != len(readers):
                raise TrainingError("data loader state does not match this loader (workers or shard sets changed)")
            for r, cursor in zip(readers, state["sets"]):
                r.restore(cursor)
            draw, dropped, samples, batches = state["draw"], state["dropped"], state["samples"], state["batches"]

        def snapshot() -> dict:
            return {"role": role, "roles": roles, "sets": [dict(r.cursor) for r in readers], "draw": draw,
                    "dropped": dropped, "samples": samples, "batches": batches}

        def emit(items: list[_Item], snap: dict) -> dict:
            nonlocal samples, batches
            samples, batches = samples + len(items), batches + 1
            batch = collate([self._decode(it) for it in items], pad_id=o.pad_id, image_size=o.image_size)
            batch["_state"] = {**snap, "samples": samples, "batches": batches}
            return batch

        pending: list[_Item] = []
        while o.limit is None or samples + len(pending) < o.limit:
            snap = snapshot()  # the state before this draw: where a restored reader picks up
            loc, set_index = self._draw(readers, role, draw)
            if loc is None:
                break
            item = self._prepare(loc, self.sets[set_index], role, draw)
            draw += 1
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

    def _draw(self, readers: list[_SetReader], role: int, draw: int) -> tuple[Optional[SampleLoc], int]:
        """The set of draw number `draw` (deterministic), then its reader's next sample."""
        o = self.opts
        while True:
            live = [i for i, r in enumerate(readers) if not r.done]
            if not live:
                return None, -1
            text = [i for i in live if self.sets[i].text]
            train = [i for i in live if not self.sets[i].text]
            if text and train:
                group = text if _uniform("mix", o.seed, self.rank, role, draw) < o.text_fraction else train
            else:
                group = text or train
            weights = [max(self.sets[i].weight, 0.0) for i in group]
            if not sum(weights):
                weights = [1.0] * len(group)
            u = _uniform("set", o.seed, self.rank, role, draw) * sum(weights)
            choice = group[-1]
            for i, w in zip(group, weights):
                if u < w:
                    choice = i
                    break
                u -= w
            loc = readers[choice].next()
            if loc is not None:
                return loc, choice
            # that set just finished its last epoch (finite mode): draw again among the others

    def _prepare(self, loc: SampleLoc, s: MixSet, role: int, draw: int) -> Optional[_Item]:
        """Tokenise (no JPEG decoding); None when the answer does not survive truncation."""
        o = self.opts
        rec = read_record(loc)
        n = len(loc.frames)
        media_type = rec.get("media_type") or ("image" if n == 1 else "video")
        rep = o.image_frames if (o.replicate_images and media_type == "image" and n == 1 and o.image_frames > 1) else 0
        question_first = _uniform("order", o.seed, self.rank, role, draw) < o.question_first
        order = "question_first" if question_first else "video_first"
        sid = str(rec.get("id", loc.key))
        item = _Item(sid, str(rec.get("source", s.name)), loc, rep or n, rep)
        messages = rec.get("messages") or []
        if o.dpo:
            if rec.get("chosen") is None or rec.get("rejected") is None:
                raise DataError(f"{loc.shard}: sample {sid} has no chosen/rejected answers; "
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

    def _decode(self, item: _Item) -> Sample:
        from fvlm_cli.data.media import replicate

        frames = decode_frames(item.loc, self.opts.image_size)
        if item.replicate:
            frames = replicate(frames, item.replicate)
        return Sample(item.id, item.source, frames, item.encoded, item.chosen, item.rejected)


def collate(samples: Sequence[Sample], *, pad_id: int, image_size: int) -> dict:
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

    def __init__(self, dataset: ShardMixture, *, num_workers: int = 0, pin_memory: bool = False):
        self.dataset, self.num_workers, self.pin_memory = dataset, max(0, num_workers), pin_memory
        self._iter: Optional[Iterator[dict]] = None
        self._dl_iter: Any = None
        self._delivered = 0
        self._roles: dict[int, dict] = {}

    @property
    def _n_roles(self) -> int:
        return max(1, self.num_workers)

    def __iter__(self) -> Iterator[dict]:
        if self._iter is None:
            self.dataset.role_offset = self._delivered % self._n_roles
            self.dataset.role_states = dict(self._roles)
            if self.num_workers:
                os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers are forked
                # in-order (the default): batch i comes from worker i % W -- what exact resume relies on
                dl = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                                pin_memory=self.pin_memory, persistent_workers=False)
                self._iter = self._dl_iter = iter(dl)
            else:
                self._iter = iter(self.dataset)
        while True:
            try:
                batch = next(self._iter)
            except StopIteration:
                return
            except FvlmError as e:  # raised in a worker: torch wraps the message in a traceback
                self.close()
                raise type(e)(_worker_message(e)) from None
            state = batch.pop("_state")
            self._roles[state["role"]] = state
            if batch.pop("_end", False):  # a finished reader's final counts, not a batch
                continue
            self._delivered += 1
            yield batch

    def state_dict(self) -> dict:
        """The data position after the batches delivered so far (JSON-serialisable; one per rank)."""
        return {"format": STATE_FORMAT, "batches": self._delivered, "num_workers": self.num_workers,
                "rank": self.dataset.rank, "world_size": self.dataset.world,
                "sets": [s.name for s in self.dataset.sets],
                "roles": {str(r): s for r, s in sorted(self._roles.items())}}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly after `state` (call before iterating)."""
        if self._iter is not None:
            raise TrainingError("load the data loader state before iterating over the loader")
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise TrainingError("not an fvlm data loader state")
        mine = {"num_workers": self.num_workers, "rank": self.dataset.rank, "world_size": self.dataset.world,
                "sets": [s.name for s in self.dataset.sets]}
        for key, value in mine.items():
            if state.get(key) != value:
                raise TrainingError(f"data loader state was saved with {key}={state.get(key)!r}, this run has "
                                    f"{value!r}: resume with the same data config and world size")
        self._delivered = int(state["batches"])
        self._roles = {int(r): s for r, s in state["roles"].items()}

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
    def epochs(self) -> dict[str, int]:
        """Per shard set: the epoch its slowest reader is in."""
        out: dict[str, int] = {}
        for st in self._roles.values():
            for s, cursor in zip(self.dataset.sets, st["sets"]):
                out[s.name] = min(out.get(s.name, cursor["epoch"]), cursor["epoch"])
        return out

    def close(self) -> None:
        """Stop the worker processes (a closed loader cannot be iterated again)."""
        if self._dl_iter is not None and hasattr(self._dl_iter, "_shutdown_workers"):
            self._dl_iter._shutdown_workers()
        self._dl_iter = None
        self._iter = iter(())


def _worker_message(e: Exception) -> str:
    """The original one-line message of an fvlm error re-raised by a DataLoader worker."""
    text = str(e)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    return last.split(f"{type(e).__name__}: ", 1)[-1]


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


def _options(cfg: Any, tokenizer: Any, *, stage: int, dpo: bool) -> MixtureOptions:
    chat, data = cfg.chat, cfg.data
    qf = chat.question_first_ratio if chat.question_first_ratio > 0 else float(chat.order == "question_first")
    return MixtureOptions(
        stage=stage, dpo=dpo, system_prompt=chat.system_prompt, question_first=qf, max_tokens=data.max_text_tokens,
        batch_size=data.batch_size, frame_budget=data.frame_budget, image_size=cfg.model.image_size,
        image_frames=cfg.media.image_frames, replicate_images=data.replicate_images, text_fraction=data.text_fraction,
        block=data.shuffle_buffer, seed=data.seed, pad_id=int(tokenizer.pad_token_id))


def build_train_loader(cfg: Any, tokenizer: Any, *, stage: int, rank: int = 0, world_size: int = 1, dpo: bool = False,
                       epochs: Optional[int] = None, num_workers: Optional[int] = None,
                       pin_memory: bool = False) -> TrainLoader:
    """The training stream of one rank from `cfg` (a RunConfig): `data.train` mixed by weight, `data.text` drawn
    with probability `data.text_fraction`. Endless unless `epochs` is given (1 = one pass: every sample once)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    sets = [MixSet(f"train{i}", discover_shards(s.path), s.weight, path=s.path) for i, s in enumerate(cfg.data.train)]
    if not dpo:
        sets += [MixSet(f"text{i}", discover_shards(s.path), s.weight, text=True, path=s.path)
                 for i, s in enumerate(cfg.data.text)]
    opts = _options(cfg, tokenizer, stage=stage, dpo=dpo)
    opts.epochs = epochs
    workers = cfg.data.num_workers if num_workers is None else num_workers
    readers = world_size * max(1, workers)
    for s in sets:
        if len(s.shards) < readers:
            log.warning("shard set %s (%s): %d shard(s) for %d readers (ranks x workers): sample-level split, every "
                        "reader scans all its shards", s.name, s.path, len(s.shards), readers)
    return TrainLoader(ShardMixture(sets, tokenizer, opts, rank=rank, world_size=world_size),
                       num_workers=workers, pin_memory=pin_memory)


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
    return EvalLoader(ShardMixture([MixSet("eval", discover_shards(path), path=str(path))], tokenizer, opts))
