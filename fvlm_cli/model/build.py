"""Build, save and load fvlm models.

A model is a folder (SPEC §2.6): `config.json` (the LLM and DINO architectures inline plus the fvlm
fields), `model.safetensors`, the tokenizer files and a `README.md`. Loading a folder never downloads
base weights. `--model` also takes a preset name, a training checkpoint, a run dir or a Hub id.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fvlm_cli import config as cfglib
from fvlm_cli.errors import ModelLoadError
from fvlm_cli.settings import ChatConfig, MediaConfig, ModelConfig

PRESET_DIR = cfglib.CONFIG_DIR / "model"
DEFAULT_MODEL = "sanps/fVLM-135M"

# transformers 4.x <-> 5.x DINOv2 attention names (the released fVLM-135M was saved with 4.x)
_DINO_V4 = {"attention.attention.query": "attention.q_proj", "attention.attention.key": "attention.k_proj",
            "attention.attention.value": "attention.v_proj", "attention.output.dense": "attention.o_proj"}


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset(name: str, overrides: list[str] | None = None) -> ModelConfig:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        raise ModelLoadError(f"unknown preset {name!r}; presets: {', '.join(preset_names())}")
    return cfglib.load(ModelConfig, path, overrides)


def _llm_from_config(d: dict, attn: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    d = dict(d)
    kind = d.pop("model_type", "llama")
    for k in ("architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype"):
        d.pop(k, None)
    conf = AutoConfig.for_model(kind, **d)
    return AutoModelForCausalLM.from_config(conf, attn_implementation=attn)


def _dino_from_config(d: dict):
    from transformers import Dinov2Config, Dinov2Model

    d = {k: v for k, v in d.items() if k not in ("model_type", "architectures", "transformers_version", "_name_or_path",
                                                  "torch_dtype", "dtype", "stage_names", "out_features", "out_indices")}
    return Dinov2Model(Dinov2Config(**d))


def _hub_error(what: str, e: Exception) -> ModelLoadError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ModelLoadError(f"cannot load {what} from the Hugging Face Hub ({first}); "
                          "offline? try `--model tiny` or a local model folder")


def build_model(cfg: ModelConfig, pretrained: bool | None = None):
    """A fresh FoveatedVLM for a preset: base weights from the Hub when `pretrained`, else random init."""
    from fvlm_cli.model.vlm import FoveatedVLM

    pretrained = cfg.pretrained if pretrained is None else pretrained
    if pretrained:
        from transformers import AutoModelForCausalLM, Dinov2Model

        try:
            llm = AutoModelForCausalLM.from_pretrained(cfg.llm, attn_implementation=cfg.attn_implementation, dtype=torch.float32)
            dino = Dinov2Model.from_pretrained(cfg.dino, dtype=torch.float32)
        except OSError as e:
            raise _hub_error(f"base weights {cfg.llm} / {cfg.dino}", e) from None
    else:
        if cfg.llm_config is None or cfg.dino_config is None:
            raise ModelLoadError(f"model {cfg.name!r}: pretrained=false needs llm_config and dino_config inline")
        llm = _llm_from_config(cfg.llm_config, cfg.attn_implementation)
        dino = _dino_from_config(cfg.dino_config)
    model = FoveatedVLM(llm, dino, query_dim=cfg.query_dim, visual_scale=cfg.visual_scale, image_size=cfg.image_size)
    if cfg.gradient_checkpointing:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


# ---- state dicts ----------------------------------------------------------------------------
def runtime_dino_naming() -> str:
    import transformers

    return "transformers-5" if int(transformers.__version__.split(".")[0]) >= 5 else "transformers-4"


def detect_dino_naming(keys) -> str:
    keys = list(keys)
    if any(".attention.attention.query." in k for k in keys):
        return "transformers-4"
    if any(".attention.q_proj." in k for k in keys if k.startswith("encoder.dino.")):
        return "transformers-5"
    return "unknown"


def convert_dino_keys(sd: dict, to: str) -> dict:
    """Rename DINOv2 attention keys to `to` ('transformers-4' or 'transformers-5'); other keys untouched."""
    pairs = _DINO_V4.items() if to == "transformers-5" else ((v, k) for k, v in _DINO_V4.items())
    pairs = list(pairs)
    out = {}
    for k, v in sd.items():
        if k.startswith("encoder.dino."):
            for a, b in pairs:
                k = k.replace(f".{a}.", f".{b}.")
        out[k] = v
    return out


def clean_state_dict(sd: dict) -> dict:
    """Strip wrappers that training code adds: DDP `module.`, torch.compile `_orig_mod.`."""
    out = {}
    for k, v in sd.items():
        k = k.replace("_orig_mod.", "")
        if k.startswith("module."):
            k = k[len("module."):]
        out[k] = v
    return out


def load_weights(model, sd: dict) -> str:
    """Load `sd` strictly (both DINOv2 namings accepted). Returns the naming found. Missing or
    unexpected keys are an error that lists them: never a silent partial load."""
    sd = clean_state_dict(sd)
    found = detect_dino_naming(sd.keys())
    runtime = runtime_dino_naming()
    if found != "unknown" and found != runtime:
        sd = convert_dino_keys(sd, runtime)
    expected = model.state_dict()
    tied = model.llm.config.tie_word_embeddings
    if tied:
        sd.pop("llm.lm_head.weight", None)  # tied to the embeddings; may be absent or present
    missing = [k for k in expected if k not in sd and not (tied and k == "llm.lm_head.weight")]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        def show(ks):
            return ", ".join(ks[:8]) + (f" … (+{len(ks) - 8} more)" if len(ks) > 8 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {show(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {show(unexpected)}")
        raise ModelLoadError(f"weights do not match the architecture ({found} DINOv2 names); " + "; ".join(parts))
    bad = [k for k, v in sd.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        k = bad[0]
        raise ModelLoadError(f"weight shape mismatch for {len(bad)} keys, e.g. {k}: file {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}")
    model.load_state_dict(sd, strict=False)
    if tied:
        model.llm.tie_weights()
    return found


def export_state_dict(model) -> dict:
    """Weights for saving: contiguous, with the tied lm_head left out (it is the embedding matrix)."""
    sd = clean_state_dict(model.state_dict())
    if model.llm.config.tie_word_embeddings:
        sd.pop("llm.lm_head.weight", None)
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


# ---- folders --------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    model_cfg: ModelConfig
    media: MediaConfig = field(default_factory=MediaConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    source: str = ""
    naming: str = ""
    folder: Path | None = None


def fvlm_config_dict(model, model_cfg: ModelConfig, media: MediaConfig, chat: ChatConfig) -> dict:
    from fvlm_cli import __version__

    llm_conf = {k: v for k, v in model.llm.config.to_dict().items()
                if k not in ("architectures", "_name_or_path", "transformers_version", "torch_dtype", "dtype")
                and not k.startswith("_")}
    dino_conf = {k: v for k, v in model.encoder.dino.config.to_dict().items()
                 if k not in ("architectures", "_name_or_path", "transformers_version", "torch_dtype", "dtype",
                              "stage_names", "out_features", "out_indices") and not k.startswith("_")}
    return {
        "model_type": "fvlm",
        "architectures": ["FoveatedVLM"],
        "fvlm_version": __version__,
        "preset": model_cfg.name,
        "base_models": {"llm": model_cfg.llm, "dino": model_cfg.dino},
        "tokenizer": model_cfg.tokenizer or model_cfg.llm,
        "llm_config": llm_conf,
        "dino_config": dino_conf,
        "query_dim": model.query_dim,
        "visual_scale": model.visual_scale,
        "image_size": model.image_size,
        "media": cfglib.to_dict(media),
        "chat": cfglib.to_dict(chat),
        "num_parameters": model.num_parameters(),
    }


def save_model_folder(out: str | Path, model, tokenizer, model_cfg: ModelConfig, media: MediaConfig | None = None,
                      chat: ChatConfig | None = None) -> Path:
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    media, chat = media or MediaConfig(), chat or ChatConfig()
    conf = fvlm_config_dict(model, model_cfg, media, chat)
    tmp = out / "model.safetensors.tmp"
    save_file(export_state_dict(model), str(tmp), metadata={"format": "pt", "dino_naming": runtime_dino_naming()})
    tmp.replace(out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(conf, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out


def _model_cfg_from_folder_config(conf: dict) -> ModelConfig:
    if "llm_config" not in conf:
        name = _preset_for(conf.get("_name_or_path", "") or conf.get("name", ""))
        return preset(name)
    return ModelConfig(
        name=conf.get("preset", "custom"), llm=conf.get("base_models", {}).get("llm", ""),
        dino=conf.get("base_models", {}).get("dino", ""), llm_config=conf["llm_config"], dino_config=conf["dino_config"],
        tokenizer=conf.get("tokenizer", ""), pretrained=False, query_dim=conf.get("query_dim", 384),
        visual_scale=conf.get("visual_scale", 0.14), image_size=conf.get("image_size", 224))


def _preset_for(name: str) -> str:
    """A published folder without fvlm fields: pick the preset its name points at (fVLM-135M -> fvlm-135m)."""
    low = name.lower()
    for p in ("1.7b", "360m", "135m"):
        if p in low:
            return f"fvlm-{p}"
    return "fvlm-135m"


def _read_weights(folder: Path) -> dict:
    st = sorted(folder.glob("*.safetensors"))
    if st:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        sd = {}
        for f in st:
            try:
                sd.update(load_file(str(f)))
            except SafetensorError:  # the released fVLM-135M's "model.safetensors" is a torch.save file
                sd.update(_torch_weights(f))
        return sd
    pt = sorted([*folder.glob("*.pt"), *folder.glob("*.bin"), *folder.glob("*.pth")])
    if not pt:
        raise ModelLoadError(f"{folder}: no model.safetensors (or .pt/.bin) weights found")
    return _torch_weights(pt[0])


def _torch_weights(path: Path) -> dict:
    try:
        with open(path, "rb") as f:  # a file object: torch >= 2.13 routes "*.safetensors" paths to safetensors
            obj = torch.load(f, map_location="cpu", weights_only=True)  # never unpickle code
    except Exception as e:
        raise ModelLoadError(f"{path}: not a safetensors or torch weights file ({str(e).splitlines()[0][:120]})") from None
    for key in ("model_state_dict", "state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    return obj


def load_folder(folder: str | Path, source: str | None = None) -> LoadedModel:
    from fvlm_cli.model.tokenizer import load_tokenizer

    folder = Path(folder)
    conf_path = folder / "config.json"
    conf = json.loads(conf_path.read_text()) if conf_path.exists() else {"name": str(source or folder)}
    mcfg = _model_cfg_from_folder_config(conf)
    model = build_model(mcfg, pretrained=False)
    naming = load_weights(model, _read_weights(folder))
    media = cfglib.from_dict(MediaConfig, conf.get("media", {}))
    chat = cfglib.from_dict(ChatConfig, conf.get("chat", {}))
    has_tok = any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = load_tokenizer(str(folder) if has_tok else (mcfg.tokenizer or mcfg.llm))
    return LoadedModel(model, tokenizer, mcfg, media, chat, source or str(folder), naming, folder)


def find_folder(path: Path) -> Path:
    """A run dir -> its best (else latest) checkpoint; a weights file -> its folder."""
    if path.is_file():
        return path.parent
    if (path / "config.json").exists() or list(path.glob("*.safetensors")):
        return path
    ckpt = path / "checkpoints"
    for name in ("best", "latest", "final"):
        if (ckpt / name).exists():
            return (ckpt / name).resolve()
    for name in ("model", "final"):
        if (path / name / "config.json").exists():
            return path / name
    raise ModelLoadError(f"{path}: not a model folder, checkpoint or run dir (no config.json / checkpoints/)")


def load_model(spec: str = DEFAULT_MODEL, *, device: str = "auto", dtype: str = "auto",
               overrides: list[str] | None = None) -> LoadedModel:
    """`spec`: preset name, model folder, checkpoint, run dir, or Hub id. Returns the model in eval mode."""
    from fvlm_cli.model.tokenizer import load_tokenizer
    from fvlm_cli.runtime import resolve_device, resolve_dtype

    dev = resolve_device(device)
    if spec in preset_names():
        mcfg = preset(spec, overrides)
        torch.manual_seed(0)  # a random-init preset is the same model every time it is loaded
        model = build_model(mcfg)
        lm = LoadedModel(model, load_tokenizer(mcfg.tokenizer or mcfg.llm), mcfg, source=f"preset:{spec}",
                         naming="random-init" if not mcfg.pretrained else "base-weights")
    elif Path(spec).exists():
        lm = load_folder(find_folder(Path(spec)), source=spec)
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.pt", "*.bin", "*.txt", "*.model", "*.md", "*.jinja"])
        except Exception as e:  # offline, gated, or missing repo
            raise _hub_error(f"model {spec!r}", e) from None
        lm = load_folder(folder, source=spec)
    else:
        raise ModelLoadError(f"--model {spec!r}: not a preset ({', '.join(preset_names())}), an existing path, or a Hub id (owner/name)")
    lm.model.to(dev)
    if dtype != "auto" and resolve_dtype(dtype, dev) == torch.bfloat16:
        lm.model.to(torch.bfloat16)
    lm.model.eval()
    return lm
