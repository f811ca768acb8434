"""The shard loader: split across ranks x workers, text retention, images, padding, exact resume, budgets."""

import json
from collections import Counter
from itertools import islice

import numpy as np
import pytest
import torch

from fvlm_cli.data.chat import encode_chat
from fvlm_cli.data.loader import build_eval_loader, build_train_loader, discover_shards
from fvlm_cli.data.media import frames_to_tensor
from fvlm_cli.errors import DataError, TrainingError
from fvlm_cli.model.tokenizer import load_tokenizer
from fvlm_cli.settings import RunConfig, ShardSet
from shard_factory import frame_code, make_samples, solid_frames, write_shards

S = 8  # frame size: tiny, the loader's logic does not depend on it


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def _cfg(train=(), text=(), **data) -> RunConfig:
    cfg = RunConfig()
    cfg.model.image_size = S
    cfg.data.train = [ShardSet(path=str(p)) for p in train]
    cfg.data.text = [ShardSet(path=str(p)) for p in text]
    cfg.data.num_workers = 0
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def _take(loader, n):
    out = list(islice(iter(loader), n))
    loader.close()
    return out


def test_discover_shards(tmp_path):
    paths = write_shards(tmp_path / "a", make_samples(n_video=6, size=S), per_shard=2)
    write_shards(tmp_path / "b", make_samples(n_video=4, size=S), per_shard=2, manifest=False)
    assert discover_shards(tmp_path / "a") == [str(p) for p in paths]           # manifest list
    assert len(discover_shards(tmp_path / "b")) == 2                              # *.tar
    assert discover_shards(str(tmp_path / "a" / "*.tar")) == [str(p) for p in paths]
    assert discover_shards(str(tmp_path / "a" / "shard-{000000..000001}.tar")) == [str(p) for p in paths[:2]]
    assert discover_shards(paths[0]) == [str(paths[0])]
    with pytest.raises(DataError):
        discover_shards(tmp_path / "nothing-*.tar")
    with pytest.raises(DataError):
        discover_shards(str(tmp_path / "a" / "shard-{000000..000009}.tar"))  # names a shard that does not exist


@pytest.mark.parametrize("video_shards", [8, 2])  # 8: shard-level split; 2 < 2 ranks x 2 workers: sample-level
def test_one_epoch_covers_every_sample_once(tmp_path, tok, video_shards):
    videos = make_samples(n_video=20, n_image=4, size=S)
    texts = make_samples(n_text=8, size=S, prefix="t", start=100)
    write_shards(tmp_path / "v", videos, per_shard=-(-24 // video_shards))
    write_shards(tmp_path / "t", texts, per_shard=2)
    cfg = _cfg([tmp_path / "v"], [tmp_path / "t"], batch_size=3, shuffle_buffer=4)
    seen, by_rank = [], {}
    for rank in range(2):
        loader = build_train_loader(cfg, tok, stage=2, rank=rank, world_size=2, epochs=1, num_workers=2)
        ids = [i for batch in loader for i in batch["ids"]]
        by_rank[rank] = set(ids)
        seen += ids
    expected = {s["id"] for s in videos + texts}
    assert Counter(seen) == Counter(expected)  # every sample exactly once over 2 ranks x 2 workers
    assert not by_rank[0] & by_rank[1] and by_rank[0] and by_rank[1]
    if video_shards == 8:  # shard-level: a shard's samples all go to one rank
        per_shard = 3
        for n in range(8):
            shard_ids = {s["id"] for s in videos[n * per_shard:(n + 1) * per_shard]}
            assert shard_ids <= by_rank[0] or shard_ids <= by_rank[1]


def test_text_fraction_is_realised(tmp_path, tok):
    write_shards(tmp_path / "v", make_samples(n_video=20, frames=(1, 2), size=S, source="video"), per_shard=4)
    write_shards(tmp_path / "t", make_samples(n_text=10, size=S, source="text", prefix="t"), per_shard=5)
    cfg = _cfg([tmp_path / "v"], [tmp_path / "t"], batch_size=50, text_fraction=0.14)
    batches = _take(build_train_loader(cfg, tok, stage=2), 40)
    sources = [s for b in batches for s in b["sources"]]
    assert len(sources) == 2000
    fraction = sources.count("text") / len(sources)
    assert abs(fraction - 0.14) < 0.03, fraction
    # the text samples really are in the batches, frameless and with targets
    for b in batches[:5]:
        for row, src in enumerate(b["sources"]):
            if src == "text":
                assert not b["frame_mask"][row].any() and b["loss_mask"][row].sum() > 0


def _mixed_set(tmp_path):
    samples = make_samples(n_video=2, frames=(3, 5), size=S) + make_samples(n_image=1, size=S, start=2) \
        + make_samples(n_text=1, size=S, start=3)
    no_type = make_samples(n_image=1, size=S, start=4, media_type=False)       # 1 frame, no media_type -> image
    one_frame_video = make_samples(n_video=1, frames=(1,), size=S, start=5)     # 1 frame, media_type video
    write_shards(tmp_path / "m", samples + no_type + one_frame_video, per_shard=3)
    return samples + no_type + one_frame_video


def test_frames_padding_images_and_text_only(tmp_path, tok):
    samples = _mixed_set(tmp_path)
    cfg = _cfg(batch_size=6)
    (batch,) = list(build_eval_loader(str(tmp_path / "m"), tok, cfg, stage=2))
    assert batch["ids"] == [s["id"] for s in samples]
    B, T = 6, 8
    assert batch["frames"].shape == (B, T, 3, S, S) and batch["frames"].dtype == torch.float32
    assert batch["frame_mask"].sum(1).tolist() == [3, 5, 8, 0, 8, 1]  # images replicated to media.image_frames
    for row, s in enumerate(samples):
        n = int(batch["frame_mask"][row].sum())
        assert batch["frame_mask"][row, :n].all() and not batch["frame_mask"][row, n:].any()  # real frames first
        assert torch.all(batch["frames"][row, n:] == 0)                                    # padding is zeros
        if len(s["frames"]):
            want = frames_to_tensor(np.repeat(s["frames"], n // len(s["frames"]), axis=0))
            assert torch.allclose(batch["frames"][row, :n], want, atol=0.1)  # JPEG-close to what was written
    # image frames are 8 copies of the one stored frame
    assert torch.equal(batch["frames"][2, 0], batch["frames"][2, 7])
    # text: right-padded with the pad id (= <|im_end|>), masks follow the true length
    for row, s in enumerate(samples):
        enc = encode_chat(s["record"]["messages"], tok, stage=2, system_prompt=cfg.chat.system_prompt)
        n = len(enc.input_ids)
        assert batch["input_ids"][row, :n].tolist() == enc.input_ids
        assert batch["loss_mask"][row, :n].tolist() == enc.loss_mask
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert torch.all(batch["input_ids"][row, n:] == tok.pad_token_id)
        assert torch.all(batch["loss_mask"][row, n:] == 0)
    assert batch["visual_pos"].tolist() == [0] * B


def test_all_text_batch_has_zero_frames(tmp_path, tok):
    write_shards(tmp_path / "t", make_samples(n_text=4, size=S), per_shard=4)
    (batch,) = list(build_eval_loader(str(tmp_path / "t"), tok, _cfg(batch_size=4), stage=1))
    assert batch["frames"].shape == (4, 0, 3, S, S) and batch["frame_mask"].shape == (4, 0)
    assert torch.equal(batch["loss_mask"], batch["attention_mask"])  # stage 1: every text token is a target


def test_image_replication_can_be_switched_off(tmp_path, tok):
    _mixed_set(tmp_path)
    (batch,) = list(build_eval_loader(str(tmp_path / "m"), tok, _cfg(batch_size=6, replicate_images=False), stage=2))
    assert batch["frame_mask"].sum(1).tolist() == [3, 5, 1, 0, 1, 1]


def _resume_sets(tmp_path):
    write_shards(tmp_path / "v", make_samples(n_video=8, n_image=2, frames=(1, 2, 3), size=S), per_shard=3)
    write_shards(tmp_path / "t", make_samples(n_text=6, size=S, prefix="t", start=50), per_shard=2)
    return [tmp_path / "v"], [tmp_path / "t"]


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize("workers,frame_budget", [(0, 0), (1, 0), (2, 0), (2, 10), (0, 10)])
def test_resume_is_exact(tmp_path, tok, workers, frame_budget):
    train, text = _resume_sets(tmp_path)
    # with a budget, batches close on the budget (not on batch_size): the sample that overflowed must come next
    cfg = _cfg(train, text, batch_size=16 if frame_budget else 3, shuffle_buffer=4, text_fraction=0.3,
               frame_budget=frame_budget)
    cfg.chat.question_first_ratio = 0.5
    k, more = 5, 4
    reference = _take(build_train_loader(cfg, tok, stage=2, num_workers=workers), k + more)

    first = build_train_loader(cfg, tok, stage=2, num_workers=workers)
    head = _take(first, k)
    state = json.loads(json.dumps(first.state_dict()))  # a plain-JSON state
    assert state["batches"] == k and first.samples == sum(len(b["ids"]) for b in head)

    resumed = build_train_loader(cfg, tok, stage=2, num_workers=workers)
    resumed.load_state_dict(state)
    tail = _take(resumed, more)
    for a, b in zip(head + tail, reference):
        _same(a, b)
    # more than one epoch and several visual positions were exercised
    assert len({i for b in reference for i in b["ids"]}) < sum(len(b["ids"]) for b in reference)
    assert len({v for b in reference for v in b["visual_pos"].tolist()}) > 1


def test_frame_budget_caps_padded_frames(tmp_path, tok):
    write_shards(tmp_path / "v", make_samples(n_video=30, n_image=4, frames=(1, 3, 6), size=S), per_shard=5)
    cfg = _cfg([tmp_path / "v"], batch_size=16, frame_budget=12)
    batches = _take(build_train_loader(cfg, tok, stage=2), 30)
    sizes = [(len(b["ids"]), b["frames"].shape[1]) for b in batches]
    assert all(B * T <= 12 for B, T in sizes), sizes
    assert max(B for B, _ in sizes) > 1  # budgets pack several short samples


def test_truncated_answers_are_dropped_and_counted(tmp_path, tok):
    samples = make_samples(n_video=12, size=S, long_question=3)  # every 3rd question is hundreds of tokens
    write_shards(tmp_path / "v", samples, per_shard=4)
    cfg = _cfg([tmp_path / "v"], batch_size=4, max_text_tokens=96)
    loader = build_train_loader(cfg, tok, stage=2, epochs=1)
    ids = [i for b in loader for i in b["ids"]]
    long_ids = {s["id"] for j, s in enumerate(samples) if j % 3 == 0}
    assert set(ids) == {s["id"] for s in samples} - long_ids
    assert loader.dropped == len(long_ids)


def test_dpo_batches(tmp_path, tok):
    samples = make_samples(n_video=3, n_image=1, size=S, dpo=True)
    write_shards(tmp_path / "p", samples, per_shard=4)
    (batch,) = list(build_eval_loader(str(tmp_path / "p"), tok, _cfg(batch_size=4), stage=2, dpo=True))
    for side in ("chosen", "rejected"):
        for key in ("input_ids", "attention_mask", "loss_mask", "visual_pos"):
            assert f"{side}_{key}" in batch
        for row, s in enumerate(samples):
            targets = batch[f"{side}_input_ids"][row][batch[f"{side}_loss_mask"][row].bool()].tolist()
            assert tok.decode(targets) == s["record"][side] + "<|im_end|>"
    assert "input_ids" not in batch and batch["frames"].shape[:2] == (4, 8)
    write_shards(tmp_path / "sft", make_samples(n_video=2, size=S), per_shard=2)
    with pytest.raises(DataError):
        list(build_eval_loader(str(tmp_path / "sft"), tok, _cfg(), stage=2, dpo=True))


def test_eval_loader_is_fixed_and_limited(tmp_path, tok):
    samples = make_samples(n_video=7, n_text=3, size=S)
    write_shards(tmp_path / "val", samples, per_shard=3)
    loader = build_eval_loader(str(tmp_path / "val"), tok, _cfg(batch_size=4), stage=2, limit=6)
    first = [i for b in loader for i in b["ids"]]
    assert first == [s["id"] for s in samples[:6]] == [i for b in loader for i in b["ids"]]


def test_state_checks(tmp_path, tok):
    train, text = _resume_sets(tmp_path)
    cfg = _cfg(train, text, batch_size=2)
    loader = build_train_loader(cfg, tok, stage=2)
    _take(loader, 2)
    other = build_train_loader(cfg, tok, stage=2, num_workers=2)
    with pytest.raises(TrainingError):
        other.load_state_dict(loader.state_dict())  # different num_workers: not an exact continuation


@pytest.mark.parametrize("workers", [0, 2])
def test_endless_reader_without_samples_is_a_one_line_error(tmp_path, tok, workers):
    write_shards(tmp_path / "one", make_samples(n_video=1, size=S), per_shard=1)
    cfg = _cfg([tmp_path / "one"])
    with pytest.raises(DataError) as err:
        _take(build_train_loader(cfg, tok, stage=2, rank=1, world_size=2, num_workers=workers), 1)
    assert str(err.value).startswith("shard set") and "gives no samples" in str(err.value)
    assert "\n" not in str(err.value)  # also when raised inside a DataLoader worker


def test_factory_frames_round_trip():
    frames = solid_frames(5, 3, S)
    assert [frame_code(f) for f in frames] == [(0, 5), (1, 5), (2, 5)]


def test_reads_shards_written_by_precompute_writer(tmp_path, tok):
    from fvlm_cli.data.shards import ShardWriter, sample_key, sample_record

    samples = make_samples(n_video=2, n_text=1, size=S)
    (tmp_path / "w").mkdir()
    writer = ShardWriter(tmp_path / "w" / "shard-000000.tar")
    for i, s in enumerate(samples):
        r = s["record"]
        record = sample_record(r["id"], r["source"], r["kind"], r["messages"], r["timestamps"])
        writer.write(sample_key(i, r["id"]), record, s["frames"])
    writer.close()
    (batch,) = list(build_eval_loader(str(tmp_path / "w"), tok, _cfg(batch_size=3), stage=2))
    assert batch["ids"] == [s["id"] for s in samples]
    assert batch["frame_mask"].sum(1).tolist() == [len(s["frames"]) for s in samples]
