"""One shard set as one reader (rank x DataLoader worker) streams it, and the elastic-resume plan.

Readers are numbered globally: reader `me = rank * workers + worker` of `readers = world * workers`. Everything a
reader does (its shard slice, its block shuffles, the mixture draws in loader.py) depends on (me, readers) only,
so 2 ranks x 1 worker read exactly what 1 rank x 2 workers reads.

Epoch e of a set: the sorted shard list shuffled with (seed, set, e) -- the same on every rank -- then the slice
`[me::readers]`: each shard is read by exactly one reader per epoch. With fewer shards than readers every reader
walks all shards and keeps every `readers`-th sample (each sample still once per epoch). A reader's samples are
shuffled in blocks of `block` consecutive samples; a block holds the samples' bytes (`ShardSample`).

Cursor (saved with every batch): epoch, the block's start (shard position in the reader's epoch list, sample
position in that shard, count of kept samples in the epoch) and the position inside the block. A restore reopens
that shard, skips to the block start (for a remote shard: never re-reading earlier shards), rebuilds the block.

Elastic resume (other world size or worker count): `elastic_plan` works out, per set, from every old reader's
cursor (and the per-shard sample counts of the manifest, or a counting pass) which samples of the oldest
unfinished epoch E were not read yet ("carry"), and which samples of later epochs readers that ran ahead already
read ("exclude"). The new readers first split the carry among themselves (epoch E: each left-over sample read
exactly once), then continue with epoch E+1, ... skipping the excluded samples. The plan is saved with the
loader state, so a later resume (exact or elastic again) sees it.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from fvlm_cli.data.remote import shown
from fvlm_cli.data.shards import ShardSample, stream_shard
from fvlm_cli.errors import CorruptShard, DataError, TrainingError

log = logging.getLogger("fvlm.data")


def digest(*keys: Any) -> int:
    return int.from_bytes(hashlib.blake2b(repr(keys).encode(), digest_size=8).digest(), "little")


def uniform(*keys: Any) -> float:
    """A uniform [0, 1) number that depends only on `keys` (not on process, hash seed or call order)."""
    return digest(*keys) / 2.0 ** 64


@dataclass
class MixSet:
    name: str            # "train0", "text0", ...: seeds the shuffles, so moving the data keeps the order
    shards: list[str]
    weight: float = 1.0
    text: bool = False   # a text-retention set (drawn with probability text_fraction)
    path: str = ""       # as configured, for messages
    counts: dict[str, int] = field(default_factory=dict)   # shard -> samples (manifest)
    sha256: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- sample sets as ranges (compact, JSON)

def to_ranges(ordinals) -> list[list[int]]:
    out: list[list[int]] = []
    for o in sorted(ordinals):
        if out and out[-1][1] == o:
            out[-1][1] = o + 1
        else:
            out.append([o, o + 1])
    return out


def from_ranges(ranges) -> set[int]:
    return {o for a, b in ranges for o in range(a, b)}


def _refs_to_json(refs: dict[str, set[int]]) -> dict[str, list[list[int]]]:
    return {url: to_ranges(o) for url, o in sorted(refs.items()) if o}


def _refs_from_json(data: dict) -> dict[str, set[int]]:
    return {url: from_ranges(r) for url, r in (data or {}).items()}


class SetReader:
    """A reader's stream of one shard set: endless epochs (or `epochs`), block-shuffled, resumable."""

    def __init__(self, s: MixSet, *, seed: int, me: int, readers: int, block: int, shuffle: bool,
                 epochs: Optional[int], access: Any = None, plan: Optional[dict] = None):
        self.set, self.seed, self.me, self.readers = s, seed, me, readers
        self.block, self.shuffle, self.epochs, self.access = max(1, block), shuffle, epochs, access
        self.plan = plan
        self._carry = _refs_from_json(plan["carry"]) if plan else {}
        self._exclude = {int(e): _refs_from_json(r) for e, r in (plan or {}).get("exclude", {}).items()}
        self.cursor = self.initial_cursor()
        self._block: Optional[list[ShardSample]] = None
        self._block_end: tuple[int, int, int] = (0, 0, 0)
        self._epoch_cache: tuple[int, Any] = (-1, None)
        self._stream: Optional[list] = None   # [url, next ordinal, generator]
        self.skipped_shards = 0               # corrupt shards whose rest was skipped (this process)

    def initial_cursor(self) -> dict:
        return {"epoch": self.plan["epoch"] if self.plan else 0, "shard": 0, "offset": 0, "index": 0, "pos": 0}

    @property
    def done(self) -> bool:
        return self.epochs is not None and self.cursor["epoch"] >= self.epochs

    def epoch_plan(self, epoch: int) -> tuple[list[str], bool, Optional[dict], Optional[dict]]:
        """(this reader's shards, split by shard?, include {shard: ordinals} or None, exclude or None)."""
        if self._epoch_cache[0] != epoch:
            carry = self.plan is not None and epoch == self.plan["epoch"]
            order = sorted(self._carry) if carry else sorted(self.set.shards)
            if self.shuffle:  # same permutation on every rank: the slices below partition it
                random.Random(digest("carry" if carry else "epoch", self.seed, self.set.name, epoch)).shuffle(order)
            by_shard = len(order) >= self.readers
            if by_shard:
                order = order[self.me::self.readers]
            self._epoch_cache = (epoch, (order, by_shard, self._carry if carry else None,
                                         None if carry else self._exclude.get(epoch)))
        return self._epoch_cache[1]

    def restore(self, cursor: dict) -> None:
        self.cursor = dict(cursor)
        self._block = None

    def next(self) -> Optional[ShardSample]:
        """The next sample, or None when the last epoch is finished."""
        c = self.cursor
        while not self.done:
            if self._block is None:
                self._load_block()
            if c["pos"] < len(self._block):
                sample = self._block[c["pos"]]
                c["pos"] += 1
                return sample
            shard, offset, index = self._block_end
            shards, _, include, exclude = self.epoch_plan(c["epoch"])
            if shard >= len(shards):
                fresh_epoch = c["shard"] == 0 and c["offset"] == 0
                if self.epochs is None and fresh_epoch and not self._block and include is None and exclude is None:
                    raise DataError(  # would loop forever
                        f"shard set {shown(self.set.path) or self.set.name} gives no samples to reader {self.me} of "
                        f"{self.readers} ({len(self.set.shards)} shard(s) for {self.readers} readers = ranks x "
                        f"workers): write more samples or use fewer data.num_workers / ranks")
                c.update(epoch=c["epoch"] + 1, shard=0, offset=0, index=0, pos=0)
                self._close_stream()
            else:
                c.update(shard=shard, offset=offset, index=index, pos=0)
            self._block = None
        self._close_stream()
        return None

    def _keep(self, url: str, ordinal: int, include: Optional[dict], exclude: Optional[dict]) -> bool:
        if include is not None and ordinal not in include.get(url, ()):
            return False
        return exclude is None or ordinal not in exclude.get(url, ())

    def _samples(self, url: str, start: int) -> Iterator[ShardSample]:
        """The samples of `url` from `start` on, continuing the open stream when it is there."""
        st = self._stream
        if st is None or st[0] != url or st[1] != start:
            self._close_stream()
            st = self._stream = [url, start, stream_shard(url, self.access, start=start,
                                                          expected=self.set.counts.get(url),
                                                          sha256=self.set.sha256.get(url))]
        for sample in st[2]:
            st[1] = sample.ordinal + 1
            yield sample

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream[2].close()
            self._stream = None

    def _load_block(self) -> None:
        c = self.cursor
        shards, by_shard, include, exclude = self.epoch_plan(c["epoch"])
        shard, offset, index = c["shard"], c["offset"], c["index"]
        block: list[ShardSample] = []
        while shard < len(shards) and len(block) < self.block:
            url = shards[shard]
            full = False
            try:
                for s in self._samples(url, offset):
                    offset = s.ordinal + 1
                    if self._keep(url, s.ordinal, include, exclude):
                        if by_shard or index % self.readers == self.me:
                            block.append(s)
                        index += 1
                    if len(block) >= self.block:
                        full = True
                        break
            except CorruptShard as e:  # its bytes are bad: the samples read so far stay, the rest is skipped
                # (deterministically: a resumed run meets the same bytes and skips at the same sample)
                self.skipped_shards += 1
                logging.getLogger("fvlm.data").warning("%s; skipping the rest of this shard", e)
                self._close_stream()
            if not full:
                shard, offset = shard + 1, 0
                self._close_stream()
        self._shuffle_block(block, c)
        self._block, self._block_end = block, (shard, offset, index)

    def _shuffle_block(self, block: list, c: dict) -> None:
        if self.shuffle:
            random.Random(digest("block", self.seed, self.set.name, self.me, c["epoch"], c["shard"],
                                 c["offset"])).shuffle(block)

    # -- what a cursor has consumed (elastic resume): needs per-shard counts, reads no data
    def refs(self, epoch: int, counts: dict[str, int]) -> list[tuple[int, int, str]]:
        """The reader's samples of `epoch` in stream order (before block shuffles): (shard pos, ordinal, url)."""
        shards, by_shard, include, exclude = self.epoch_plan(epoch)
        out, index = [], 0
        for pos, url in enumerate(shards):
            for ordinal in range(counts[url]):
                if self._keep(url, ordinal, include, exclude):
                    if by_shard or index % self.readers == self.me:
                        out.append((pos, ordinal, url))
                    index += 1
        return out

    def consumed(self, cursor: dict, counts: dict[str, int]) -> tuple[set, set]:
        """(samples of the cursor's epoch this reader has read, all its samples of that epoch) as (url, ordinal)."""
        allrefs = self.refs(cursor["epoch"], counts)
        start = next((i for i, (p, o, _) in enumerate(allrefs) if (p, o) >= (cursor["shard"], cursor["offset"])),
                     len(allrefs))
        block = allrefs[start:start + self.block]
        self._shuffle_block(block, cursor)
        read = allrefs[:start] + block[:cursor["pos"]]
        return {(u, o) for _, o, u in read}, {(u, o) for _, o, u in allrefs}


# ---------------------------------------------------------------- elastic resume

def shard_counts(s: MixSet, access: Any) -> dict[str, int]:
    """Samples per shard: the manifest's counts, else one counting pass over the shards."""
    counts = dict(s.counts)
    missing = [u for u in s.shards if u not in counts]
    if missing:
        log.warning("shard set %s: no manifest counts for %d shard(s); counting their samples once for the elastic "
                    "resume", shown(s.path) or s.name, len(missing))
        for url in missing:
            counts[url] = sum(1 for _ in stream_shard(url, access))
    return counts


def elastic_plan(s: MixSet, set_index: int, states: list[dict], *, seed: int, block: int, shuffle: bool,
                 access: Any) -> tuple[dict, dict]:
    """(the new plan of set `s`, a summary) from all old ranks' loader states (see the module docstring)."""
    old_world = len(states)
    old_roles = max(1, int(states[0]["num_workers"]))
    old_plan = (states[0].get("plans") or {}).get(s.name)
    counts = shard_counts(s, access)
    readers = []
    for r, st in enumerate(states):
        if st.get("world_size") != old_world or st.get("rank") != r:
            raise TrainingError("the checkpoint's data loader states are incomplete (one per rank is needed)")
        for w in range(old_roles):
            reader = SetReader(s, seed=seed, me=r * old_roles + w, readers=old_world * old_roles, block=block,
                               shuffle=shuffle, epochs=None, access=access, plan=old_plan)
            role = st["roles"].get(str(w))
            cursor = role["sets"][set_index] if role else reader.initial_cursor()
            readers.append((reader, cursor))
    E = min(c["epoch"] for _, c in readers)
    carry: dict[str, set[int]] = {}
    exclude: dict[int, dict[str, set[int]]] = {}
    for e, refs in (old_plan or {}).get("exclude", {}).items():
        if int(e) > E:
            exclude[int(e)] = _refs_from_json(refs)
    for reader, cursor in readers:
        for e in range(E + 1, cursor["epoch"]):  # epochs this reader finished after E
            for _, o, u in reader.refs(e, counts):
                exclude.setdefault(e, {}).setdefault(u, set()).add(o)
        read, mine = reader.consumed(cursor, counts)
        if cursor["epoch"] == E:
            for u, o in mine - read:
                carry.setdefault(u, set()).add(o)
        else:
            for u, o in read:
                exclude.setdefault(cursor["epoch"], {}).setdefault(u, set()).add(o)
    plan = {"epoch": E, "carry": _refs_to_json(carry),
            "exclude": {str(e): _refs_to_json(r) for e, r in sorted(exclude.items()) if r}}
    summary = {"set": shown(s.path) or s.name, "epoch": E, "left": sum(len(o) for o in carry.values()),
               "ahead": sum(len(o) for r in exclude.values() for o in r.values())}
    return plan, summary
