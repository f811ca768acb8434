"""`fvlm upload` (SPEC §6): export + reload round trip, the model card, the Hub call sequence, token hygiene,
failures that keep the export. Offline: a fake HfApi, or a local HTTP server standing in for the Hub."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml

from fvlm_cli import config as cfglib
from fvlm_cli.errors import FvlmError
from fvlm_cli.model import build
from fvlm_cli.model.tokenizer import load_tokenizer
from fvlm_cli.release import upload as rel
from fvlm_cli.release.modelcard import Stage, resolve_license
from fvlm_cli.settings import (ChatConfig, DataConfig, DPOConfig, GroupConfig, MediaConfig, OptimConfig, RunConfig,
                               ShardSet, TrainConfig)

TOKEN = "hf_TESTtokenDoNotLeak0123456789"
LLM_ID, DINO_ID = "HuggingFaceTB/SmolLM2-135M-Instruct", "facebook/dinov2-small"
MODES = ("coarse_only", "coarse_fine", "autoregressive")


def _write_run(run: Path, cfg: RunConfig, metrics: list[dict]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(cfglib.dump(cfg))
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """stage1 -> stage2 (init_from stage1's run dir) -> dpo (init_from stage2's best checkpoint, which has weights)."""
    root = tmp_path_factory.mktemp("runs")
    hub_shards, local_shards = root / "shards-cauldron", root / "shards-local"
    for d, manifest in ((hub_shards, {"source": "cauldron", "input": "HuggingFaceM4/the_cauldron", "samples": 40}),
                        (local_shards, {"source": "videos", "input": "/data/my-videos", "samples": 12})):
        d.mkdir()
        (d / "manifest.json").write_text(json.dumps({**manifest, "shards": []}))
    # a tiny model that claims the 135M preset's base models, so the card has Hub base_model ids
    mcfg = dataclasses.replace(build.preset("tiny"), llm=LLM_ID, dino=DINO_ID)
    torch.manual_seed(0)
    model = build.build_model(mcfg).eval()
    tok = load_tokenizer("tiny")

    s1, s2, dpo = root / "align", root / "sft", root / "pref"  # "pref" is DPO by its metrics, not its name
    _write_run(s1, RunConfig(model=mcfg, data=DataConfig(train=[ShardSet(path=str(hub_shards))], batch_size=4),
                             optim=OptimConfig(connector=GroupConfig(lr=1e-3, lr_end=3e-5), dino=GroupConfig(lr=1e-5, lr_end=3e-5),
                                               llm=GroupConfig(lr=1e-5, lr_end=3e-5), schedule="converging"),
                             train=TrainConfig(stage=1, steps=30)),
               [{"step": 10, "loss": 3.5}, {"step": 30, "loss": 2.25, "val/loss_coarse_fine": 2.4}])
    ckpt2 = s2 / "checkpoints" / "step-000020"
    build.save_model_folder(ckpt2, model, tok, mcfg, MediaConfig(), ChatConfig())
    (s2 / "checkpoints" / "best").symlink_to("step-000020")
    _write_run(s2, RunConfig(model=mcfg, data=DataConfig(train=[ShardSet(path=str(hub_shards / "*.tar")),
                                                                ShardSet(path=str(local_shards), weight=0.5)], batch_size=4),
                             optim=OptimConfig(connector=GroupConfig(lr=3e-5), dino=GroupConfig(frozen=True)),
                             train=TrainConfig(stage=2, steps=20, grad_accum=2, init_from=str(s1))),
               [{"step": 20, "loss": 1.75, "val/loss_coarse_fine": 1.9}])
    ckpt = dpo / "checkpoints" / "step-000001"
    build.save_model_folder(ckpt, model, tok, mcfg, MediaConfig(), ChatConfig())
    torch.save({"step": 1}, ckpt / "trainer_state.pt")
    (dpo / "checkpoints" / "latest").symlink_to("step-000001")
    dpo_cfg = RunConfig(model=mcfg, optim=OptimConfig(connector=GroupConfig(lr=1e-6), schedule="constant"),
                        train=TrainConfig(stage=2, steps=1, init_from=str(s2 / "checkpoints" / "best")),
                        dpo=DPOConfig(beta=0.25))
    _write_run(dpo, dpo_cfg, [{"step": 1, "loss": 0.69, "rewards/accuracies": 0.75, "rewards/margins": 0.1}])
    (ckpt / "run_config.yaml").write_text(cfglib.dump(dpo_cfg))  # as `fvlm train` saves it in every checkpoint
    (dpo / "results.json").write_text(json.dumps({"model": str(dpo), "benchmarks": {"synthetic": {
        "coarse_only": {"loglik": {"accuracy": 0.5, "correct": 5, "total": 10, "se": 0.1}},
        "autoregressive": {"loglik": {"accuracy": 0.8, "correct": 8, "total": 10, "se": 0.05},
                           "generate": {"accuracy": 0.7, "correct": 7, "total": 10, "se": 0.06}}}}}))
    return {"root": root, "dpo": dpo, "ckpt": ckpt, "s1": s1, "s2": s2, "model": model}


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    return rel.export_model(runs["dpo"], "me/fvlm-tiny", tmp_path_factory.mktemp("exp") / "export")


def _front_matter(readme: Path) -> tuple[dict, str]:
    text = readme.read_text()
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def _probe_logits(model, mode):
    g = torch.Generator().manual_seed(7)
    frames = torch.randn(2, 3, 3, 64, 64, generator=g)
    ids = torch.randint(3, 2000, (2, 9), generator=g)
    with torch.no_grad():
        return model.eval()(frames, ids, mode=mode)["logits"]


def test_export_round_trip_same_logits(runs, exported):
    f = exported.folder
    assert exported.source == runs["ckpt"].resolve() and exported.run_dir == runs["dpo"]
    names = {p.relative_to(f).as_posix() for p in f.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json", "results.json",
            "configs/01-stage1-align.yaml", "configs/02-stage2-sft.yaml", "configs/03-dpo-pref.yaml"} <= names
    assert "trainer_state.pt" not in names and not any(n.startswith(".") for n in names)
    # the configs are the runs' own files, verbatim, oldest first
    assert (f / "configs/01-stage1-align.yaml").read_text() == (runs["s1"] / "config.yaml").read_text()
    assert exported.max_diff.keys() == set(MODES) and max(exported.max_diff.values()) <= 1e-5
    lm = build.load_model(str(f), device="cpu")  # a published folder loads by path
    for mode in MODES:
        torch.testing.assert_close(_probe_logits(lm.model, mode), _probe_logits(runs["model"], mode), atol=1e-5, rtol=0)
    assert json.loads((f / "config.json").read_text())["num_parameters"] == runs["model"].num_parameters()


def test_model_card(runs, exported):
    meta, body = _front_matter(exported.folder / "README.md")
    assert meta["license"] == "apache-2.0"
    assert meta["base_model"] == [LLM_ID, DINO_ID] and meta["base_model_relation"] == "finetune"
    assert meta["datasets"] == ["HuggingFaceM4/the_cauldron"]  # the local-input shard set is not a Hub dataset
    assert {"video-text-to-text", "vision-language", "foveated", "fvlm", "smollm2", "dinov2"} <= set(meta["tags"])
    assert meta["pipeline_tag"] == "video-text-to-text" and meta["library_name"] == "fvlm"
    n = runs["model"].num_parameters()
    assert f"{n:,}" in body
    for text in ("coarse_only", "coarse_fine", "autoregressive", "replicated to 8 frames",
                 "from fvlm_cli import load_model, generate", 'load_model("me/fvlm-tiny")',
                 "fvlm caption clip.mp4 --model me/fvlm-tiny --mode autoregressive",
                 "DPO (β=0.25)", "0.001→3e-5", "frozen", "converging", "4×2",
                 "| autoregressive | 80.0 ± 5.0 (n=10) | 70.0 ± 6.0 (n=10) |", "configs/03-dpo-pref.yaml",
                 "gradient clipping at 1",
                 "## Limitations"):
        assert text in body, text
    assert body.index("1 · alignment") < body.index("2 · VL-SFT") < body.index("DPO")


def test_license_precedence():
    stages = [Stage("a", {"license": "cc-by-4.0"}), Stage("b", {})]
    assert resolve_license("mit", stages, {}) == "mit"
    assert resolve_license(None, stages, {}) == "cc-by-4.0"
    assert resolve_license(None, [], {}) == "apache-2.0"


def test_stages_of_a_checkpoint_copied_out_of_its_run(runs, tmp_path):
    import shutil

    bare = shutil.copytree(runs["ckpt"], tmp_path / "bare")  # no run dir: its run_config.yaml starts the chain
    chain = rel.training_stages(bare)
    assert [st.name for _, st in chain] == ["align", "sft", "bare"]
    assert chain[0][0] == runs["s1"] / "config.yaml" and chain[2][0] == bare / "run_config.yaml"
    assert [st.config_file for _, st in chain][:2] == ["configs/01-stage1-align.yaml", "configs/02-stage2-sft.yaml"]


def test_reexport_of_an_export_keeps_configs_and_stages(exported, tmp_path):
    # no run dir: the stages come from the export's own configs/ (kinds from the file names)
    exp = rel.export_model(exported.folder, "me/again", tmp_path / "again")
    assert [s.kind for s in exp.stages] == ["sft", "sft", "dpo"] and exp.run_dir is None
    assert sorted(p.name for p in (exp.folder / "configs").iterdir()) == sorted(
        p.name for p in (exported.folder / "configs").iterdir())
    meta, body = _front_matter(exp.folder / "README.md")
    assert meta["datasets"] == ["HuggingFaceM4/the_cauldron"] and "DPO (β=0.25)" in body
    assert (exp.folder / "results.json").read_bytes() == (exported.folder / "results.json").read_bytes()


def test_card_of_a_random_init_preset_and_default_datasets(tmp_path):
    from fvlm_cli.release.modelcard import build_card

    conf = {"base_models": {"llm": "tiny-llama", "dino": "tiny-dinov2"}, "num_parameters": 1234, "preset": "tiny"}
    card = build_card(conf, [], None, repo_id="me/t")
    assert "base_model" not in card.data.to_dict()  # placeholders are not Hub ids: the Hub would reject them
    assert "random base weights" in card.text and "No training configs" in card.text and "1,234" in card.text
    # precompute without --input read the source's canonical Hub dataset; synthetic data has none
    assert rel._dataset_hub_id({"source": "smoltalk", "input": None}, tmp_path) == "HuggingFaceTB/smoltalk"
    assert rel._dataset_hub_id({"source": "synthetic", "input": None}, tmp_path) is None


class FakeHfApi:
    """Records what fvlm asks of huggingface_hub.HfApi."""

    calls: list = []
    existing: dict = {}  # repo_id -> private, for repos that exist before the test's create_repo

    def __init__(self, endpoint=None, token=None, **kw):
        FakeHfApi.calls.append(("init", {"endpoint": endpoint, "token": token}))

    def create_repo(self, repo_id, **kw):
        FakeHfApi.calls.append(("create_repo", {"repo_id": repo_id, **kw}))
        FakeHfApi.existing.setdefault(repo_id, bool(kw.get("private")))  # exist_ok: an existing repo is unchanged
        return f"{os.environ['HF_ENDPOINT']}/{repo_id}"

    def repo_info(self, repo_id, repo_type=None):
        FakeHfApi.calls.append(("repo_info", {"repo_id": repo_id, "repo_type": repo_type}))
        return type("RepoInfo", (), {"private": FakeHfApi.existing[repo_id]})()

    def upload_folder(self, **kw):
        FakeHfApi.calls.append(("upload_folder", kw))
        files = sorted(p.name for p in Path(kw["folder_path"]).iterdir())
        FakeHfApi.calls.append(("files", files))
        return type("CommitInfo", (), {"commit_url": f"https://hub.test/{kw['repo_id']}/commit/abc123"})()


@pytest.fixture
def hub_env(monkeypatch):
    import huggingface_hub

    FakeHfApi.calls, FakeHfApi.existing = [], {}
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # no login cache of the test machine
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return monkeypatch


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    from fvlm_cli.cli import main

    monkeypatch.setattr(sys, "argv", ["fvlm", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code or 0
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _no_token_anywhere(folder: Path, *texts: str) -> None:
    for t in texts:
        assert TOKEN not in t
    for p in folder.rglob("*"):
        if p.is_file():
            assert TOKEN.encode() not in p.read_bytes(), p


def test_upload_call_sequence(runs, hub_env, capsys, tmp_path):
    # the source is a checkpoint symlink, not the run dir: the run and its earlier stages are still found
    out = tmp_path / "export"
    code, stdout, stderr = run_cli(hub_env, capsys, "upload", runs["dpo"] / "checkpoints" / "latest", "--repo-id",
                                   "me/fvlm-tiny", "--private", "--out", out, "--commit-message", "first release",
                                   "--license", "mit")
    assert code == 0, stderr
    assert stdout.strip() == "https://hub.test/me/fvlm-tiny/commit/abc123"
    kinds = [c[0] for c in FakeHfApi.calls]
    assert kinds == ["init", "create_repo", "repo_info", "upload_folder", "files"]
    assert FakeHfApi.calls[0][1] == {"endpoint": "http://127.0.0.1:9", "token": TOKEN}
    assert FakeHfApi.calls[1][1] == {"repo_id": "me/fvlm-tiny", "private": True, "exist_ok": True, "repo_type": "model"}
    up = FakeHfApi.calls[3][1]
    assert (up["repo_id"], up["repo_type"], up["commit_message"]) == ("me/fvlm-tiny", "model", "first release")
    assert up["delete_patterns"] == ["configs/*", "results.json"]  # an earlier export's leftovers go, a LICENSE stays
    assert Path(up["folder_path"]) == out
    assert {"README.md", "config.json", "model.safetensors", "configs", "results.json"} <= set(FakeHfApi.calls[4][1])
    assert len(list((out / "configs").iterdir())) == 3
    assert _front_matter(out / "README.md")[0]["license"] == "mit"
    _no_token_anywhere(out, stdout, stderr)


def test_visibility_follows_the_owner_unless_asked_and_an_existing_repo_is_not_silently_public(exported, hub_env):
    """No flag: private=None, so a new repo gets its owner's default (an organisation may default to private).
    --private on a repo that already exists public is refused before anything is uploaded."""
    rel.push_folder(exported.folder, "org/new")
    assert FakeHfApi.calls[1] == ("create_repo", {"repo_id": "org/new", "private": None, "exist_ok": True,
                                                  "repo_type": "model"})
    assert "repo_info" not in [c[0] for c in FakeHfApi.calls]
    FakeHfApi.calls, FakeHfApi.existing = [], {"me/old": False}
    with pytest.raises(FvlmError, match="me/old already exists and is public; --private does not change"):
        rel.push_folder(exported.folder, "me/old", private=True)
    assert "upload_folder" not in [c[0] for c in FakeHfApi.calls]


def test_a_licence_the_hub_does_not_know_is_refused_before_the_export(runs, hub_env, capsys, tmp_path):
    out = tmp_path / "export"
    code, _, stderr = run_cli(hub_env, capsys, "upload", runs["dpo"], "--repo-id", "me/x", "--out", out,
                              "--license", "Apache 2.0", "--dry-run")
    assert code == 2 and "did you mean apache-2.0" in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_token_exits_2_before_anything(runs, hub_env, capsys, tmp_path):
    hub_env.delenv("HF_TOKEN")
    out = tmp_path / "export"
    code, stdout, stderr = run_cli(hub_env, capsys, "upload", runs["dpo"], "--repo-id", "me/x", "--out", out)
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "token" in stderr
    assert "Traceback" not in stderr and FakeHfApi.calls == [] and not out.exists()


def test_folder_containing_the_token_is_refused(runs, hub_env, exported, tmp_path):
    import shutil

    folder = shutil.copytree(exported.folder, tmp_path / "leaky")
    (folder / "configs" / "01-stage1-align.yaml").write_text(f"hf_token: {TOKEN}\n")
    with pytest.raises(FvlmError, match="contains your Hugging Face token") as e:
        rel.push_folder(folder, "me/x")
    assert TOKEN not in str(e.value) and FakeHfApi.calls == []


class FailingHub:
    """127.0.0.1 standing in for the Hub API: every request is a 500; records paths and whether auth came."""

    def __init__(self):
        self.requests: list[tuple[str, str, bool]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _fail(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                hub.requests.append((self.command, self.path, self.headers.get("authorization") == f"Bearer {TOKEN}"))
                body = b'{"error": "internal error"}'
                self.send_response(500)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_HEAD = _fail

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_http_failure_keeps_the_export(runs, monkeypatch, capsys, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub = FailingHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    out = tmp_path / "export"
    try:
        code, stdout, stderr = run_cli(monkeypatch, capsys, "upload", runs["dpo"], "--repo-id", "me/x", "--out", out)
    finally:
        hub.close()
    assert code == 2 and "Traceback" not in stderr
    err_lines = [ln for ln in stderr.splitlines() if "error:" in ln]
    assert len(err_lines) == 1 and hub.url in err_lines[0] and str(out) in stderr
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    # the real huggingface_hub client went to HF_ENDPOINT, with the token only in its Authorization header
    assert hub.requests and hub.requests[0][:2] == ("POST", "/api/repos/create") and hub.requests[0][2]
    _no_token_anywhere(out, stdout, stderr)


def test_connection_refused_is_one_line(exported, monkeypatch, tmp_path):
    import shutil

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    folder = shutil.copytree(exported.folder, tmp_path / "copy")
    with pytest.raises(FvlmError) as e:
        rel.push_folder(folder, "me/x", token=TOKEN)
    msg = str(e.value)
    assert "\n" not in msg and endpoint in msg and str(folder) in msg and TOKEN not in msg
    assert (folder / "model.safetensors").is_file()


def test_validation_catches_a_different_folder(runs, exported):
    ref = rel.reference_logits(runs["model"], ("coarse_fine",))
    ref = {"coarse_fine": ref["coarse_fine"] + 1e-3}
    with pytest.raises(FvlmError, match="does not reproduce the source checkpoint"):
        rel.validate_export(exported.folder, ref)


def test_out_guards(runs, tmp_path):
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(FvlmError, match="not an fvlm export"):
        rel.export_model(runs["dpo"], "me/x", tmp_path)
    with pytest.raises(FvlmError, match="contains the source"):
        rel.export_model(runs["dpo"], "me/x", runs["root"])
    with pytest.raises(FvlmError, match="repo id"):
        rel.export_model(runs["dpo"], "not a repo id", tmp_path / "o")
    assert (tmp_path / "keep.txt").read_text() == "user data"


def test_cli_dry_run_subprocess(runs, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_ENDPOINT")}
    env["HF_HOME"] = str(tmp_path / "hf-home")  # no login cache: a dry run needs no token
    out = tmp_path / "dry"
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "fvlm_cli", "upload", str(runs["dpo"]), "--repo-id", "x/y", "--dry-run",
                        "--out", str(out)], capture_output=True, text=True, env=env, cwd=root, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "dry run" in r.stderr and str(out) in r.stderr and r.stdout.strip() == str(out)
    assert (out / "README.md").is_file() and (out / "model.safetensors").is_file()


def test_secret_looking_values_are_redacted_from_the_exported_text():
    """Run configs are copied for reproducibility, but a data path may be a signed URL or a pipe: command with a
    header: their credentials never reach the Hub (the paths themselves stay)."""
    text = ("train: [{path: 'https://acct.blob.core.windows.net/c/s-{000000..000001}.tar?sv=2024&sig=ABCSECRET'},\n"
            "  {path: \"pipe:curl -s -H 'Authorization: Bearer XYZSECRET' https://x/y.tar\"},\n"
            "  {path: 'https://x/z.tar?download=true'}]\n"
            "aws_secret_access_key: QQSECRET\nkey_id: AKIAABCDEFGHIJKLMNOP\nother: hf_" + "a" * 34 + "\n")
    clean, n = rel.redact_secrets(text)
    assert n == 5 and not any(s in clean for s in ("ABCSECRET", "XYZSECRET", "QQSECRET", "AKIAABCD", "hf_aaa"))
    assert "https://acct.blob.core.windows.net/c/s-{000000..000001}.tar?<redacted>" in clean
    assert "https://x/z.tar?download=true" in clean and "pipe:curl -s -H 'Authorization: <redacted>'" in clean
    assert rel.redact_secrets("lr: 1.0e-3\npath: data/webvid\n") == ("lr: 1.0e-3\npath: data/webvid\n", 0)
