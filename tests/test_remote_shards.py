"""Shard sets from anywhere (SPEC §3.7): http(s) with faults, pipe:, hf:// against a local Hub stand-in,
retries, corrupt samples, cache, sha256, coverage across ranks x workers, publishing with upload-shards."""

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from fvlm_cli.data.loader import build_eval_loader, build_train_loader
from fvlm_cli.data.shards import iter_shard_samples, resolve_shards
from fvlm_cli.errors import DataError
from fvlm_cli.model.tokenizer import load_tokenizer
from hub_standin import FileServer, HubStandIn
from shard_factory import WHOLE_MODEL, loader_config, make_samples, write_shards

S = 8
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    d = tmp_path_factory.mktemp("remote") / "set"
    samples = make_samples(n_video=12, n_image=2, n_text=2, size=S)
    write_shards(d, samples, per_shard=2)  # 8 shards + manifest.json (counts)
    return d, samples


def _cfg(*paths, **data):
    return loader_config(*paths, size=S, **data)


def _epoch_ids(cfg, tok, world=1, workers=0):
    ids = []
    for rank in range(world):
        loader = build_train_loader(cfg, tok, stage=2, rank=rank, world_size=world, epochs=1, num_workers=workers)
        ids += [i for b in loader for i in b["ids"]]
    return ids


def _pattern(base: str) -> str:
    return f"{base}/shard-{{000000..000007}}.tar"


def test_http_set_with_503_and_cut_connection_reads_like_the_local_copy(shard_set, tok):
    d, samples = shard_set
    local = [b for b in build_eval_loader(str(d), tok, _cfg(batch_size=4), stage=2)]
    with FileServer(d, faults={"shard-000001.tar": ["503"], "shard-000002.tar": ["cut"]}) as srv:
        remote = [b for b in build_eval_loader(_pattern(srv.url), tok, _cfg(batch_size=4), stage=2)]
        assert srv.requests["shard-000001.tar"] == 2 and srv.requests["shard-000002.tar"] == 2  # one retry each
        assert srv.requests["manifest.json"] >= 1  # the manifest next to the shards was read (counts)
    assert [b["ids"] for b in remote] == [b["ids"] for b in local] and len(local) == 4
    for a, b in zip(local, remote):
        assert (a["frames"] == b["frames"]).all() and (a["input_ids"] == b["input_ids"]).all()


def test_training_from_http_gives_the_same_losses_as_from_disk(tmp_path):
    from fvlm_cli.train.loop import load_run_config, train

    d = tmp_path / "set64"  # the tiny preset reads 64 px frames
    write_shards(d, make_samples(n_video=12, n_image=2, n_text=2, size=64), per_shard=2)
    losses = {}
    with FileServer(d, faults={"shard-000003.tar": ["503"], "shard-000005.tar": ["cut"]}) as srv:
        for name, path in (("local", str(d)), ("http", _pattern(srv.url))):
            cfg = load_run_config(str(ROOT / "configs/train/tiny-stage1.yaml"), [
                *WHOLE_MODEL,
                f"data.train=[{{path: '{path}'}}]", "data.text=[]", "data.val=null", "data.batch_size=4", "data.num_workers=0",
                "data.retry_backoff=0.01", "data.shuffle_buffer=4", "train.steps=4", "train.log_every=1",
                "train.eval_every=0", "train.save_every=0", f"out_dir={tmp_path / name}"])
            train(cfg, quiet=True)
            losses[name] = [json.loads(x)["loss"] for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                            if "loss" in json.loads(x)]
        assert srv.requests["shard-000003.tar"] + srv.requests["shard-000005.tar"] == 4  # both faults met, one retry each
    assert len(losses["local"]) == 4 and losses["http"] == losses["local"]


def test_pipe_set(shard_set, tok):
    d, samples = shard_set
    ids = _epoch_ids(_cfg(f"pipe:cat {d}/shard-{{000000..000007}}.tar"), tok)
    assert Counter(ids) == Counter(s["id"] for s in samples)


@pytest.mark.parametrize("remote", [False, True])
def test_every_sample_once_per_epoch_across_ranks_and_workers(shard_set, tok, remote):
    d, samples = shard_set
    if remote:
        with FileServer(d) as srv:
            ids = _epoch_ids(_cfg(_pattern(srv.url), batch_size=3), tok, world=2, workers=2)
    else:
        ids = _epoch_ids(_cfg(d, batch_size=3), tok, world=2, workers=2)
    assert Counter(ids) == Counter(s["id"] for s in samples)


def test_bounded_retries_then_one_line_error_naming_the_shard(shard_set, tok):
    d, _ = shard_set
    with FileServer(d, faults={"shard-000004.tar": ["503-always"], "shard-000006.tar": ["404-always"]}) as srv:
        with pytest.raises(DataError) as err:
            list(build_eval_loader(f"{srv.url}/shard-000004.tar", tok, _cfg(retries=2), stage=2))
        assert str(err.value) == f"shard {srv.url}/shard-000004.tar: HTTP 503 after 3 attempts"
        assert srv.requests["shard-000004.tar"] == 3
        with pytest.raises(DataError, match="HTTP 404$"):  # not transient: no retry
            list(build_eval_loader(f"{srv.url}/shard-000006.tar", tok, _cfg(retries=2), stage=2))
        assert srv.requests["shard-000006.tar"] == 1


def test_corrupt_samples_are_skipped_and_counted(tmp_path, tok):
    samples = make_samples(n_video=4, size=S)
    (path,) = write_shards(tmp_path / "c", samples, per_shard=4, manifest=False)
    with tarfile.open(path) as t:  # rewrite: sample 1 gets a garbled json, sample 2 a garbled JPEG
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    with tarfile.open(path, "w") as t:
        for m, data in members:
            if m.name.endswith(".json") and "video0001" in m.name:
                data = b"{not json"
            if m.name.endswith(".000.jpg") and "video0002" in m.name:
                data = data[:20]
            m.size = len(data)
            t.addfile(m, io.BytesIO(data))
    loader = build_train_loader(_cfg(tmp_path / "c", batch_size=2), tok, stage=2, epochs=1)
    ids = [i for b in loader for i in b["ids"]]
    assert sorted(ids) == ["video0000", "video0003"] and loader.corrupt == 2
    skipped = []
    assert [s["json"]["id"] for s in iter_shard_samples(path, decode="bytes", skipped=skipped)] == \
        ["video0000", "video0002", "video0003"]  # the tools read the json; one unreadable sample skipped
    assert len(skipped) == 1 and "video0001" in skipped[0]


def test_cache_dir_downloads_each_shard_once(shard_set, tok, tmp_path):
    d, samples = shard_set
    with FileServer(d) as srv:
        cfg = _cfg(_pattern(srv.url), batch_size=4, cache_dir=str(tmp_path / "cache"))
        loader = build_train_loader(cfg, tok, stage=2, epochs=2)
        ids = [i for b in loader for i in b["ids"]]
        assert Counter(ids) == Counter(2 * [s["id"] for s in samples])
        assert all(srv.requests[f"shard-{n:06d}.tar"] == 1 for n in range(8)), srv.requests
    assert len(list((tmp_path / "cache").glob("*shard-*.tar"))) == 8


def test_sha256_is_checked_when_verify_is_on(tmp_path, tok):
    d = tmp_path / "v"
    paths = write_shards(d, make_samples(n_video=4, size=S), per_shard=2)
    import hashlib

    manifest = json.loads((d / "manifest.json").read_text())
    for entry, p in zip(manifest["shards"], paths):
        entry["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
    manifest["shards"][1]["sha256"] = "0" * 64  # a shard that is not what the manifest says
    (d / "manifest.json").write_text(json.dumps(manifest))
    with FileServer(d) as srv:
        assert len(_epoch_ids(_cfg(f"{srv.url}/shard-{{000000..000001}}.tar", retries=1), tok)) == 4  # verify off
        with pytest.raises(DataError, match="shard-000001.tar: sha256 mismatch .* after 2 attempts"):
            _epoch_ids(_cfg(f"{srv.url}/shard-{{000000..000001}}.tar", retries=1, verify=True), tok)


def test_remote_folder_needs_a_manifest(shard_set, tmp_path):
    d, samples = shard_set
    with FileServer(d.parent) as srv:
        ref = resolve_shards(f"{srv.url}/set")  # a folder URL: its manifest lists the shards
        assert [u.rsplit("/", 1)[1] for u in ref.urls] == [f"shard-{n:06d}.tar" for n in range(8)]
        assert sum(ref.counts.values()) == len(samples)
        with pytest.raises(DataError, match="no manifest.json there"):
            resolve_shards(f"{srv.url}/elsewhere")


# ---------------------------------------------------------------- Hub: push, then train from hf://

@pytest.fixture
def hub(tmp_path, monkeypatch):
    import huggingface_hub

    h = HubStandIn(root=tmp_path / "hub")
    monkeypatch.setenv("HF_ENDPOINT", h.url)
    monkeypatch.setenv("HF_TOKEN", "hf_standin_token")
    monkeypatch.setattr(huggingface_hub, "HfApi", h.api_class())
    yield h
    h.close()


def _precomputed(tmp_path) -> Path:
    """A shard set written by the product's writer, with its manifest (sha256 per shard)."""
    from fvlm_cli.data.shards import ShardWriter, build_manifest, sample_key, write_json_atomic

    d = tmp_path / "pre"
    d.mkdir()
    samples = make_samples(n_video=6, n_text=2, size=S)
    recs = []
    for n in range(4):
        w = ShardWriter(d / f"shard-{n:06d}.tar")
        for i, s in enumerate(samples[2 * n:2 * n + 2]):
            w.write_jpegs(sample_key(2 * n + i, s["id"]), s["record"],
                          [__import__("fvlm_cli.data.shards", fromlist=["x"]).encode_jpeg(f) for f in s["frames"]])
        info = w.close()
        recs.append({"name": info.name, "part": "0/1", "samples": info.samples, "sha256": info.sha256,
                     "bytes": info.bytes, "counts": {"source": {}, "kind": {}}, "frames": {}, "failures": []})
    write_json_atomic(d / "manifest.json", build_manifest(recs, source="synthetic", input=None, options={}, n_parts=1,
                                                          parts_complete=[0]))
    return d


def test_upload_shards_is_resumable_and_trains_from_hf(hub, tmp_path, tok):
    from typer.testing import CliRunner

    from fvlm_cli.cli import app

    d = _precomputed(tmp_path)
    hub.fail_commit = lambda n: n == 1  # the second shard commit fails
    runner = CliRunner()
    r = runner.invoke(app, ["upload-shards", str(d), "--repo-id", "me/clips", "--per-commit", "2",
                            "--path-in-repo", "v1"])
    assert r.exit_code != 0 and "rerun the same command" in str(r.exception)
    assert sorted(p.name for p in (hub.repo("me/clips") / "v1").iterdir()) == ["shard-000000.tar", "shard-000001.tar"]
    hub.fail_commit = None
    r = runner.invoke(app, ["upload-shards", str(d), "--repo-id", "me/clips", "--per-commit", "2",
                            "--path-in-repo", "v1", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["skipped"] == 2 and out["uploaded"] == 2 and out["url"] == "hf://datasets/me/clips/v1"
    assert hub.commits[-1]["files"] == ["v1/manifest.json"]  # the manifest goes last
    assert [c["files"] for c in hub.commits[1:-1]] == [["v1/shard-000002.tar", "v1/shard-000003.tar"]]
    # a third run uploads no shard again
    r = runner.invoke(app, ["upload-shards", str(d), "--repo-id", "me/clips", "--path-in-repo", "v1", "--json"])
    assert json.loads(r.stdout.strip().splitlines()[-1])["uploaded"] == 0
    # train from it: the folder (manifest), a glob through the Hub's tree listing, and a brace pattern
    want = Counter(s["json"]["id"] for s in iter_shard_samples(d, decode="bytes"))
    for spec in ("hf://datasets/me/clips/v1", "hf://datasets/me/clips/v1/*.tar",
                 "hf://datasets/me/clips@main/v1/shard-{000000..000003}.tar"):
        assert Counter(_epoch_ids(_cfg(spec, batch_size=3), tok, world=2, workers=1)) == want, spec
    auth = [h.get("Authorization") for h in hub.headers if h.get("Authorization")]
    assert auth and all(a == "Bearer hf_standin_token" for a in auth)  # the token travels only in the header


def test_upload_shards_refuses_an_incomplete_set(hub, tmp_path):
    from fvlm_cli.data.publish import publish_shards

    d = _precomputed(tmp_path)
    (d / "shard-000002.tar").unlink()
    with pytest.raises(DataError, match="shard-000002.tar listed in the manifest is missing"):
        publish_shards(d, "me/x", token="t", progress=False)
    assert not hub.commits


def test_stream_cut_at_a_member_boundary_is_noticed_by_the_manifest_count(shard_set, tok):
    """`head -c` ends the tar cleanly after the first sample (status 0): only the manifest's count tells."""
    from fvlm_cli.data.remote import ShardAccess
    from fvlm_cli.data.shards import stream_shard

    d, _ = shard_set
    tar = d / "shard-000000.tar"
    with tarfile.open(tar) as t:
        members = t.getmembers()
    first_key = members[0].name.split(".")[0]
    cut = next(m.offset for m in members if not m.name.startswith(first_key))  # the second sample's header
    url = f"pipe:head -c {cut} {tar}"
    assert [s.key for s in stream_shard(url)] == [first_key]  # no count: the short stream looks complete
    with pytest.raises(DataError, match=r"stream ended after 1 of 2 samples after 2 attempts"):
        list(stream_shard(url, ShardAccess(retries=1, backoff=0.01), expected=2))
    # and the half-read sample is never handed out: resuming inside a shard skips what was read
    assert [s.ordinal for s in stream_shard(str(tar), start=1)] == [1]


def test_http_glob_is_refused_with_the_alternatives():
    with pytest.raises(DataError, match="cannot be globbed; use a brace pattern"):
        resolve_shards("https://example.invalid/set/*.tar")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_shard_is_skipped_not_fatal_and_skipped_again_on_resume(tmp_path, tok, damage):
    """A shard whose bytes are bad keeps what was read before the damage; the rest of it is skipped, logged and
    counted, and training goes on. A local file is not retried for it (no 30 s of backoff), and a resumed run meets
    the same bytes and skips at the same sample, so the order after a resume is the uninterrupted one."""
    import time

    samples = make_samples(n_video=12, size=S)
    d = tmp_path / "set"
    paths = write_shards(d, samples, per_shard=4)  # 3 shards + manifest (counts, sha256)
    raw = paths[1].read_bytes()
    paths[1].write_bytes(raw[: len(raw) // 2] if damage == "truncated" else raw[:1024] + b"\x07" * 4096)
    cfg = _cfg(d, batch_size=2)
    t0 = time.perf_counter()
    loader = build_train_loader(cfg, tok, stage=2, epochs=1)
    ids = [i for b in loader for i in b["ids"]]
    assert time.perf_counter() - t0 < 20  # no retries with backoff for a local file
    whole = {s["id"] for s in samples[:4] + samples[8:]}
    assert whole <= set(ids) and len(ids) == len(set(ids)) < 12 and loader.corrupt_shards == 1
    # resume from every batch boundary: the rest is the same as the uninterrupted run's
    first = build_train_loader(cfg, tok, stage=2, epochs=1)
    it = iter(first)
    head = [i for _ in range(2) for i in next(it)["ids"]]
    state = first.state_dict()
    again = build_train_loader(cfg, tok, stage=2, epochs=1)
    again.load_state_dict(state)
    assert head + [i for b in again for i in b["ids"]] == ids


def test_resume_refuses_changed_data_but_not_moved_data(tmp_path, tok):
    """A saved position is only valid for the same shards and shuffle: a changed seed or an added shard is a
    one-line error naming what changed; the same shards in another folder resume exactly."""
    import shutil

    from fvlm_cli.errors import TrainingError

    d = tmp_path / "set"
    write_shards(d, make_samples(n_video=8, size=S), per_shard=2)
    loader = build_train_loader(_cfg(d, batch_size=2), tok, stage=2, epochs=1)
    it = iter(loader)
    head = next(it)["ids"]
    state = loader.state_dict()
    moved = tmp_path / "elsewhere"
    shutil.copytree(d, moved)
    again = build_train_loader(_cfg(moved, batch_size=2), tok, stage=2, epochs=1)
    again.load_state_dict(state)
    whole = [i for b in build_train_loader(_cfg(d, batch_size=2), tok, stage=2, epochs=1) for i in b["ids"]]
    assert head + [i for b in again for i in b["ids"]] == whole
    with pytest.raises(TrainingError, match=r"the data changed since this checkpoint \(seed\)"):
        build_train_loader(_cfg(d, batch_size=2, seed=1), tok, stage=2, epochs=1).load_state_dict(state)
    write_shards(tmp_path / "more", make_samples(n_video=2, size=S, start=50, prefix="m"), per_shard=2, manifest=False)
    shutil.copy(next((tmp_path / "more").glob("*.tar")), d / "shard-000009.tar")
    (d / "manifest.json").unlink()
    with pytest.raises(TrainingError, match=r"shards of train0.*train.init_from"):
        build_train_loader(_cfg(d, batch_size=2), tok, stage=2, epochs=1).load_state_dict(state)


def test_url_forms_people_use(shard_set, tok, tmp_path, caplog):
    """A signed https URL (its query is no glob, and never printed), an object store that answers 403 for the
    missing manifest of a brace pattern, s3:// named with the command to use, hf:// globs that stay in their
    folder, and the Hub's special refs as a revision."""
    from fvlm_cli.data import remote

    d, samples = shard_set
    signed = "?sv=2024&sig=SECRETSIG"
    with FileServer(d, faults={"manifest.json": ["403-always"], "shard-000009.tar": ["404-always"]}) as srv:
        ids = _epoch_ids(_cfg(_pattern(srv.url) + signed), tok)
        assert Counter(ids) == Counter(s["id"] for s in samples)  # no manifest (403): the shards still read
        with pytest.raises(DataError) as err:
            list(build_eval_loader(f"{srv.url}/shard-000009.tar{signed}", tok, _cfg(retries=0), stage=2))
        assert "HTTP 404" in str(err.value) and "SECRETSIG" not in str(err.value)
    assert "SECRETSIG" not in caplog.text
    with pytest.raises(DataError, match=r"^s3:// shard sets are read through .*pipe:aws s3 cp s3://b/x-"):
        resolve_shards("s3://b/x-{000000..000003}.tar")
    assert remote._glob_match("train/shard-0.tar", "train/*.tar") and not remote._glob_match("train/val/a.tar", "train/*.tar")
    assert not remote._glob_match("val/a.tar", "*.tar") and remote._glob_match("a.tar", "*.tar")
    assert remote.hf_parts("hf://datasets/o/n@refs/pr/3/shards/a.tar") == ("o/n", "refs/pr/3", "shards/a.tar")
    assert remote.hf_http_url("hf://datasets/o/n@refs/pr/3/a.tar").endswith("/resolve/refs%2Fpr%2F3/a.tar")
