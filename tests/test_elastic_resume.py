"""Elastic resume (SPEC §3.7): another world size or worker count continues the current epoch so that every
sample not yet read in it is read exactly once, then normal epochs; the same shape continues exactly."""

import json
from collections import Counter
from itertools import islice

import pytest
import torch

from fvlm_cli.data.loader import build_train_loader
from fvlm_cli.model.tokenizer import load_tokenizer
from hub_standin import FileServer
from shard_factory import loader_config, make_samples, write_shards

S = 8


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def _cfg(path, **data):
    return loader_config(path, size=S, **{"batch_size": 2, **data})


def _run(cfg, tok, world, workers, batches=None, states=None, epochs=1):
    """Per rank: the ids of `batches` batches (all when None), and every rank's state afterwards (JSON)."""
    ids, out_states = [], []
    for rank in range(world):
        loader = build_train_loader(cfg, tok, stage=2, rank=rank, world_size=world, epochs=epochs, num_workers=workers)
        if states is not None:
            loader.load_state_dict(states)
            assert loader.resumed["elastic"] is True
        it = iter(loader)
        got = list(islice(it, batches)) if batches is not None else list(it)
        ids += [i for b in got for i in b["ids"]]
        out_states.append(json.loads(json.dumps(loader.state_dict())))
        loader.close()
    return ids, out_states


@pytest.fixture(scope="module")
def samples_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("elastic") / "set"
    samples = make_samples(n_video=18, n_image=3, n_text=3, size=S)
    write_shards(d, samples, per_shard=3)  # 8 shards
    return d, [s["id"] for s in samples]


@pytest.mark.parametrize("old,new", [((2, 1), (1, 1)), ((1, 2), (1, 1)), ((2, 2), (1, 0)), ((1, 1), (2, 2))])
def test_rest_of_the_epoch_exactly_once(samples_dir, tok, old, new):
    d, all_ids = samples_dir
    cfg = _cfg(d)
    head, states = _run(cfg, tok, *old, batches=3)
    assert len(head) == 3 * 2 * old[0] and len(set(head)) == len(head)
    tail, _ = _run(cfg, tok, *new, states=states)
    assert Counter(head + tail) == Counter(all_ids)  # nothing lost, nothing repeated


def test_sample_level_split_and_a_remote_set(samples_dir, tok):
    d, all_ids = samples_dir
    with FileServer(d) as srv:  # 8 shards for 3 x 3 = 9 readers: sample-level split; counts from the remote manifest
        cfg = _cfg(f"{srv.url}/shard-{{000000..000007}}.tar")
        head, states = _run(cfg, tok, 3, 3, batches=2)
        tail, _ = _run(cfg, tok, 2, 1, states=states)
    assert Counter(head + tail) == Counter(all_ids)


def test_readers_ahead_in_the_next_epoch_are_not_repeated(tmp_path, tok):
    """Uneven shards (no manifest: counted once): rank 1 finishes epoch 0 first and reads into epoch 1 before
    the checkpoint. Over two epochs every sample is read exactly twice."""
    samples = make_samples(n_video=10, size=S)
    write_shards(tmp_path / "u", samples[:9], per_shard=3, manifest=False, name="a")
    write_shards(tmp_path / "u", samples[9:], per_shard=1, manifest=False, name="b")
    cfg = _cfg(tmp_path / "u", batch_size=1)
    head, states = _run(cfg, tok, 2, 1, batches=5, epochs=2)
    epochs = {st["rank"]: st["roles"]["0"]["sets"][0]["epoch"] for st in states}
    assert sorted(epochs.values()) == [0, 1]  # one rank is already in epoch 1
    tail, _ = _run(cfg, tok, 1, 1, states=states, epochs=2)
    assert Counter(head + tail) == Counter(2 * [s["id"] for s in samples])


def test_elastic_twice(samples_dir, tok):
    d, all_ids = samples_dir
    cfg = _cfg(d)
    a, states = _run(cfg, tok, 2, 1, batches=2)
    b, states = _run(cfg, tok, 1, 2, batches=3, states=states)
    c, _ = _run(cfg, tok, 3, 1, states=states)
    assert Counter(a + b + c) == Counter(all_ids)


def test_same_shape_from_all_ranks_states_is_exact(samples_dir, tok):
    d, _ = samples_dir
    cfg = _cfg(d, shuffle_buffer=4)
    for rank in range(2):
        straight = build_train_loader(cfg, tok, stage=2, rank=rank, world_size=2, num_workers=1)
        ref = list(islice(iter(straight), 7))
        straight.close()
    _, states = _run(cfg, tok, 2, 1, batches=4, epochs=None)
    resumed = build_train_loader(cfg, tok, stage=2, rank=1, world_size=2, num_workers=1)
    resumed.load_state_dict(states)
    assert resumed.resumed == {"elastic": False}
    tail = list(islice(iter(resumed), 3))
    resumed.close()
    for a, b in zip(tail, ref[4:]):
        assert a["ids"] == b["ids"] and torch.equal(a["frames"], b["frames"])


def test_a_state_without_the_dataloader_part_resumes_elastically(samples_dir, tok):
    """States saved before the loader kept StatefulDataLoader's part still resume: every rest sample once."""
    d, all_ids = samples_dir
    cfg = _cfg(d)
    head, states = _run(cfg, tok, 2, 1, batches=2)
    for st in states:
        del st["dataloader"]
    tail, _ = _run(cfg, tok, 2, 1, states=states)
    assert Counter(head + tail) == Counter(all_ids)
