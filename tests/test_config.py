"""Typed configs: unknown keys with suggestions, types, overrides, presets, --print-config."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fvlm_cli import config
from fvlm_cli.errors import ConfigError
from fvlm_cli.settings import ModelConfig, RunConfig
from fvlm_cli.train.loop import load_run_config

ROOT = Path(__file__).resolve().parent.parent


def test_overrides_parse_types_and_nested_lists():
    c = config.load(RunConfig, None, ["optim.llm.lr=1e-4", "train.steps=5", "data.train=[{path: a, weight: 2}]",
                                      "train.wandb=true", "data.val=null"])
    assert c.optim.llm.lr == 1e-4 and c.train.steps == 5 and c.train.wandb is True and c.data.val is None
    assert c.data.train[0].path == "a" and c.data.train[0].weight == 2.0


@pytest.mark.parametrize("override, message", [
    ("train.stpes=3", "unknown config key 'train.stpes'; did you mean 'train.steps'?"),
    ("optim.lmm.lr=1", "did you mean 'optim.llm'?"),
    ("train.steps=abc", "config key 'train.steps': expected an integer, got 'abc'"),
    ("train.mode=sideways", "is not one of"),
    ("train.wandb=maybe", "expected true/false"),
    ("noequals", "--set expects key=value"),
])
def test_bad_keys_and_types_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace("(", r"\(").replace(")", r"\)")):
        config.load(RunConfig, None, [override])


def test_yaml_file_unknown_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  stage: 2\n  eval_evry: 5\n")
    with pytest.raises(ConfigError, match="did you mean 'train.eval_every'"):
        config.load(RunConfig, p)


def test_every_shipped_config_validates():
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        if path.parent.name == "model":
            cfg = config.load(ModelConfig, path)
            assert cfg.llm_config and cfg.dino_config
        else:
            cfg = load_run_config(str(path))
            assert cfg.model.llm_config is not None, path  # the preset expanded inline


def test_stage_configs_reproduce_reference_recipe():
    s1 = load_run_config(str(ROOT / "configs/train/135m-stage1.yaml"))
    assert s1.optim.schedule == "converging" and s1.optim.warmup == 0.03
    assert (s1.optim.connector.lr, s1.optim.connector.lr_end) == (1e-3, 3e-5)
    assert (s1.optim.llm.lr, s1.optim.llm.lr_end) == (1e-5, 3e-5) and s1.optim.grad_clip == 1.0
    s2 = load_run_config(str(ROOT / "configs/train/135m-stage2.yaml"))
    assert s2.optim.schedule == "cosine" and s2.optim.llm.lr == 3e-5 and s2.train.stage == 2
    d = load_run_config(str(ROOT / "configs/train/135m-dpo.yaml"))
    assert d.optim.llm.lr == 1e-6 and d.dpo.beta == 0.1 and d.optim.warmup == 0.1
    big = load_run_config(str(ROOT / "configs/train/1.7b-stage1.yaml"))
    assert big.model.gradient_checkpointing is True


def test_print_config_is_the_resolved_config():
    r = subprocess.run([sys.executable, "-m", "fvlm_cli", "train", "-c", "configs/train/tiny-stage2.yaml",
                        "--set", "train.steps=7", "--print-config"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d = yaml.safe_load(r.stdout)
    assert d["train"]["steps"] == 7 and d["train"]["stage"] == 2 and d["model"]["name"] == "tiny"
    assert d["data"]["text_fraction"] == 0.14  # inherited from the stage-1 base config


def test_schedules():
    from fvlm_cli.settings import OptimConfig
    from fvlm_cli.train.optim import lr_at

    cos = OptimConfig(schedule="cosine", warmup=0.1, min_lr_ratio=0.1)
    assert lr_at(0, 100, 1.0, None, cos) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, None, cos) == pytest.approx(1.0)
    assert lr_at(99, 100, 1.0, None, cos) == pytest.approx(0.1, abs=1e-3)
    conv = OptimConfig(schedule="converging", warmup=0.0)
    assert lr_at(99, 100, 1e-3, 3e-5, conv) == pytest.approx(3e-5, rel=1e-2)
    assert lr_at(99, 100, 1e-5, 3e-5, conv) == pytest.approx(3e-5, rel=1e-2)
    assert lr_at(0, 100, 1e-5, 3e-5, conv) == pytest.approx(1e-5, rel=1e-2)
    const = OptimConfig(schedule="constant", warmup=0.0)
    assert lr_at(50, 100, 0.5, None, const) == 0.5


def test_param_groups_no_decay_on_norms_biases_queries():
    import torch

    from fvlm_cli.model.build import build_model, preset
    from fvlm_cli.settings import OptimConfig
    from fvlm_cli.train.optim import build_optimizer

    m = build_model(preset("tiny"))
    cfg = OptimConfig()
    cfg.dino.frozen = True
    opt = build_optimizer(m, cfg, torch.device("cpu"))
    names = {id(p): n for n, p in m.named_parameters()}
    groups = {(g["group"], g["weight_decay"] > 0): [names[id(p)] for p in g["params"]] for g in opt.param_groups}
    assert not any(g == "dino" for g, _ in groups)  # frozen: not in the optimizer, no grads
    assert not m.encoder.dino.embeddings.cls_token.requires_grad
    no_decay = groups[("connector", False)]
    assert "q_static" in no_decay and "q_init" in no_decay and "dino_to_llm.bias" in no_decay
    assert "encoder.output_proj.weight" in groups[("connector", True)]
    assert all("norm" in n or n.endswith(".bias") or n in ("q_static", "q_init") for n in
               [n for (g, decay), ns in groups.items() if not decay for n in ns])


def test_config_validate_checks_local_shard_sets_and_lists_remote_ones(tmp_path):
    """Local globs and directories must resolve to shards; remote sets are named as not checked, never fetched or
    reported missing."""
    from typer.testing import CliRunner

    from fvlm_cli.cli import app

    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "shard-000000.tar").write_bytes(b"")
    sets = [str(tmp_path / "set" / "shard-*.tar"), "https://example.invalid/s-{000000..000003}.tar",
            str(tmp_path / "absent")]
    over = ["--set", "data.train=[" + ", ".join("{path: '%s'}" % s for s in sets) + "]", "--set", "data.val=null",
            "--set", "train.init_from=null"]
    r = CliRunner().invoke(app, ["config", "validate", str(ROOT / "configs/train/tiny-stage1.yaml"), *over])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    missing = next(x for x in lines if x.startswith("not found yet"))
    assert str(tmp_path / "absent") in missing and "shard-*" not in missing and "example.invalid" not in missing
    assert any(x.startswith("remote, not checked: https://example.invalid/") for x in lines)


def test_config_keys_spells_out_types(monkeypatch):
    """`fvlm config keys` names the choices of a Literal, `null` where None is allowed, and list[...] in full (rich
    markup would eat an unescaped `[str]`); a wrong value's error names the choices too."""
    from typer.testing import CliRunner

    from fvlm_cli.cli import app
    from fvlm_cli.config import ConfigError, load
    from fvlm_cli.settings import RunConfig

    monkeypatch.setenv("COLUMNS", "250")
    r = CliRunner().invoke(app, ["config", "keys", "train."])
    assert r.exit_code == 0, r.output
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in r.output.splitlines() if line.count("│") > 3}
    assert rows["train.mode"] == "coarse_only|coarse_fine|autoregressive"
    assert rows["train.eval_modes"] == "list[str]"
    assert rows["train.init_from"] == "str | null"
    assert rows["train.compile"] == "bool | off|encoder|model"
    with pytest.raises(ConfigError, match=r"expected bool \| off\|encoder\|model, got 'graph'"):
        load(RunConfig, overrides=["train.compile=graph"])


def test_tiny_stage1_holds_the_vision_path_and_later_stages_train_it():
    """Stage 2, 3 and DPO inherit stage 1's config (`base:`), so each must unfreeze what stage 1 froze."""
    frozen = {name: (c.optim.connector.frozen, c.optim.dino.frozen, c.optim.llm.frozen) for name, c in (
        (n, load_run_config(str(ROOT / f"configs/train/tiny-{n}.yaml"))) for n in ("stage1", "stage2", "stage3", "dpo"))}
    assert frozen == {"stage1": (True, True, False), "stage2": (False, False, False), "stage3": (False, False, False),
                      "dpo": (False, False, False)}


def test_mfu_counts_no_backward_through_a_frozen_dino():
    from fvlm_cli.model.build import build_model, preset
    from fvlm_cli.train.flops import sample_flops

    m = build_model(preset("tiny"))
    trains = sample_flops(m, 8, 40)
    m.encoder.dino.requires_grad_(False)
    frozen = sample_flops(m, 8, 40)
    fwd = sample_flops(m, 8, 40, train=False)
    assert fwd < frozen < trains <= 3 * fwd + 1e-6
