"""Export a run or checkpoint as a model folder (SPEC §2.6), check it, and push it to the Hub (SPEC §6).

    exp = export_model("runs/dpo", "me/fvlm-135m")       # -> runs/dpo/export, validated
    url = push_folder(exp.folder, "me/fvlm-135m")        # create_repo + upload_folder -> commit URL

The export holds config.json + model.safetensors (re-saved from the loaded weights, so the names and the
config are canonical whatever the checkpoint's age) + the tokenizer files + README.md (the model card) +
configs/ + results.json when the run has one. Nothing of the trainer (trainer_state.pt) is copied.

Earlier stages: each run dir holds its resolved `config.yaml` (a checkpoint copied out of its run still has
its own `run_config.yaml`), whose `train.init_from` names what the stage started from. From the exported run
we follow that chain back: a checkpoint path maps to its run dir (`RUN/checkpoints/<name>` -> `RUN`, symlinks
such as `best` resolved), a relative path is tried from the working directory, then beside the run dir. The chain stops at a preset, a Hub id, a bare model folder, a
missing path or a cycle. The configs are copied verbatim, oldest first, as
`configs/01-stage1-<run name>.yaml`, `configs/02-stage2-<run name>.yaml`, `configs/03-dpo-<run name>.yaml`, ...
(a DPO run is recognised by the `rewards/*` metrics it logs).

Validation: before anything is uploaded, the exported folder is loaded back with `load_folder` and must
give the same logits as the source checkpoint on a small random input in all three modes (fp32, 1e-5).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import yaml

from fvlm_cli.errors import FvlmError
from fvlm_cli.release.modelcard import HUB_ID, ShardInfo, Stage, build_card

DEFAULT_ENDPOINT = "https://huggingface.co"
TOLERANCE = 1e-5
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_TRAINER_FILES = ("trainer_state.pt",)


class UploadError(FvlmError):
    """Export, validation or upload cannot be completed."""


@dataclass
class Export:
    folder: Path                     # the exported model folder
    source: Path                     # the checkpoint folder it was made from
    run_dir: Optional[Path]          # the run that produced it, when known
    stages: list[Stage] = field(default_factory=list)
    max_diff: dict = field(default_factory=dict)   # mode -> max |Δ logits| of the reloaded folder
    num_parameters: int = 0


def _say(log: Optional[Callable[[str], None]], msg: str) -> None:
    if log:
        log(msg)


def check_repo_id(repo_id: str) -> str:
    if not repo_id or not _REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise UploadError(f"--repo-id {repo_id!r}: expected a Hub repo id such as 'owner/name'")
    return repo_id


# ---- the run and its stages ----------------------------------------------------------------
def run_dir_of(path: Path) -> Optional[Path]:
    """The run dir a path belongs to: the path itself (it has config.yaml), or RUN for RUN/checkpoints/X."""
    path = Path(path)
    if path.is_dir() and (path / "config.yaml").is_file():
        return path
    p = path.resolve()
    if p.is_file():
        p = p.parent
    if p.parent.name == "checkpoints" and (p.parent.parent / "config.yaml").is_file():
        return p.parent.parent
    return None


def _resolve_init(init_from: str, run: Path) -> Optional[Path]:
    p = Path(init_from).expanduser()
    for cand in ([p] if p.is_absolute() else [p, run.parent / p, run / p]):
        if cand.exists():
            return cand
    return None


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UploadError(f"cannot read {path} ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UploadError(f"{path}: not a run config (top level must be a mapping)")
    return data


def _metrics(run: Path, cfg: dict, dpo: bool) -> dict:
    """The last training loss and the best value of the validation metric, from metrics.jsonl."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return {}
    best_key = (cfg.get("train") or {}).get("best_metric") or "val/loss_coarse_fine"
    last: dict = {}
    best = None
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill mid-write
        if not isinstance(rec, dict):
            continue
        last.update({k: v for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        v = rec.get(best_key)
        if isinstance(v, (int, float)) and (best is None or v < best):
            best = v
    out = {}
    if "loss" in last:
        out["loss"] = last["loss"]
    if best is not None:
        out[f"best {best_key}"] = best
    if dpo and "rewards/accuracies" in last:
        out["rewards/accuracies"] = last["rewards/accuracies"]
    return out


def _is_dpo(cfg: dict, run: Path) -> bool:
    """`fvlm dpo` runs log TRL's reward metrics; a config may also say so in train.stage."""
    if str((cfg.get("train") or {}).get("stage", "")).lower() == "dpo" or cfg.get("command") == "dpo":
        return True
    path = run / "metrics.jsonl"
    if path.is_file():
        with path.open() as f:
            for _, line in zip(range(50), f):
                if '"rewards/' in line:
                    return True
    return False


def _manifest(path_text: str, run: Path) -> Optional[dict]:
    """manifest.json of a shard set path (a directory, or a tar / glob / brace pattern inside one)."""
    head = re.split(r"[*?\[{]", path_text, maxsplit=1)[0]
    for base in (Path(head).expanduser(), run.parent / head, run / head):
        m = (base if base.is_dir() else base.parent) / "manifest.json"
        if m.is_file():
            try:
                data = json.loads(m.read_text())
            except (OSError, json.JSONDecodeError):
                return None
            return data if isinstance(data, dict) else None
    return None


def _dataset_hub_id(manifest: dict, run: Path) -> Optional[str]:
    """The Hub dataset a shard set was made from: its precompute input when that is a Hub id, or the
    source's canonical Hub repo when precompute ran without --input. Local inputs give None."""
    inp = manifest.get("input")
    if isinstance(inp, str) and inp:
        if HUB_ID.match(inp) and not any((b / inp).exists() for b in (Path.cwd(), run.parent)):
            return inp
        return None
    if manifest.get("source"):
        try:
            from fvlm_cli.data.sources import get_source

            return getattr(get_source(str(manifest["source"])), "HUB_REPO", None)
        except (FvlmError, ImportError):
            return None
    return None


def _shards(cfg: dict, run: Path) -> list[ShardInfo]:
    data = cfg.get("data") or {}
    out = []
    for key, text in (("train", False), ("text", True)):
        for s in data.get(key) or []:
            if not isinstance(s, dict) or not s.get("path"):
                continue
            info = ShardInfo(path=str(s["path"]), weight=float(s.get("weight", 1.0)), text=text)
            m = _manifest(info.path, run)
            if m:
                info.source = m.get("source")
                info.hub_id = _dataset_hub_id(m, run)
                info.samples = m.get("samples")
            out.append(info)
    return out


def stage_config(path: Optional[Path]) -> Optional[Path]:
    """The saved run config that describes `path`: RUN/config.yaml for a run dir or one of its checkpoints,
    else a bare checkpoint's own run_config.yaml (written beside its weights by `fvlm train`)."""
    if path is None:
        return None
    run = run_dir_of(path)
    if run is not None:
        return run / "config.yaml"
    own = (path if path.is_dir() else path.parent) / "run_config.yaml"
    return own if own.is_file() else None


def training_stages(start: Optional[Path]) -> list[tuple[Path, Stage]]:
    """(config file, Stage) for `start` (a run dir or checkpoint) and every earlier stage reached through
    train.init_from, oldest first."""
    chain: list[tuple[Path, Stage]] = []
    seen: set[Path] = set()
    cfg_file = stage_config(start)
    while cfg_file is not None and cfg_file.resolve() not in seen:
        seen.add(cfg_file.resolve())
        run = cfg_file.parent
        cfg = _read_yaml(cfg_file)
        dpo = _is_dpo(cfg, run)
        init = (cfg.get("train") or {}).get("init_from")
        st = Stage(name=run.resolve().name, config=cfg, kind="dpo" if dpo else "sft", data=_shards(cfg, run),
                   init_from=str(init) if init else None, metrics=_metrics(run, cfg, dpo))
        chain.append((cfg_file, st))
        cfg_file = stage_config(_resolve_init(str(init), run)) if init else None
    chain.reverse()
    for i, (_, st) in enumerate(chain):
        label = "dpo" if st.kind == "dpo" else f"stage{(st.config.get('train') or {}).get('stage', '')}"
        st.config_file = f"configs/{i + 1:02d}-{label}-{st.name}.yaml"
    return chain


def _stages_from_configs(folder: Path) -> list[Stage]:
    """Re-exporting an export (no run dir): its configs/ describe the stages (no metrics, no manifests)."""
    out = []
    for f in sorted((folder / "configs").glob("*.yaml")):
        cfg = _read_yaml(f)
        dpo = bool(re.match(r"\d+-dpo-", f.stem))  # the kind is in the name export_model gave the file
        init = (cfg.get("train") or {}).get("init_from")
        out.append(Stage(name=f.stem, config=cfg, kind="dpo" if dpo else "sft", init_from=str(init) if init else None,
                         data=_shards(cfg, folder), config_file=f"configs/{f.name}"))
    return out


# ---- export --------------------------------------------------------------------------------
def _is_export(folder: Path) -> bool:
    try:
        conf = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (conf.get("model_type") == "fvlm" and (folder / "README.md").is_file()
            and not any((folder / f).exists() for f in _TRAINER_FILES))


def _inside(a: Path, b: Path) -> bool:
    """a == b or a lies under b."""
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def default_out(run: Optional[Path], repo_id: str) -> Path:
    """RUN/export when the run is known, else ./export-<repo name>."""
    return run / "export" if run is not None else Path.cwd() / f"export-{repo_id.split('/')[-1]}"


def _probe(model, seed: int = 0):
    """A small random input: frames [1, 3, 3, H, W], input_ids [1, 8]."""
    import torch

    g = torch.Generator().manual_seed(seed)
    size = model.image_size
    frames = torch.randn(1, 3, 3, size, size, generator=g)
    ids = torch.randint(3, model.llm.config.vocab_size, (1, 8), generator=g)
    return frames, ids


def reference_logits(model, modes=("coarse_only", "coarse_fine", "autoregressive")) -> dict:
    """mode -> logits [1, 8, V] of `model` (fp32, CPU) on the probe input."""
    import torch

    model = model.float().cpu().eval()
    frames, ids = _probe(model)
    with torch.no_grad():
        return {m: model(frames, ids, mode=m)["logits"] for m in modes}


def validate_export(folder: Path, reference: dict, tokenizer=None) -> dict:
    """Load `folder` back and compare its logits with `reference` (mode -> logits). Returns mode -> max |Δ|;
    UploadError when a mode differs by more than TOLERANCE or the tokenizer encodes differently."""
    from fvlm_cli.model.build import load_folder

    try:
        lm = load_folder(folder)
    except FvlmError as e:
        raise UploadError(f"the exported folder {folder} does not load: {e}") from None
    got = reference_logits(lm.model, tuple(reference))
    diffs = {m: float((got[m] - reference[m]).abs().max()) for m in reference}
    bad = {m: d for m, d in diffs.items() if not d <= TOLERANCE}
    if bad:
        worst = max(bad, key=bad.get)
        raise UploadError(f"the exported folder {folder} does not reproduce the source checkpoint: max |Δ logits| "
                          f"{bad[worst]:.2e} in mode {worst} (tolerance {TOLERANCE:g}); nothing uploaded")
    if tokenizer is not None:
        probe = "<|im_start|>user\nDescribe this video.<|im_end|>\n"
        if lm.tokenizer(probe)["input_ids"] != tokenizer(probe)["input_ids"]:
            raise UploadError(f"the exported folder {folder}: its tokenizer encodes differently from the source's")
    return diffs


def _assemble(tmp: Path, lm, chain, folder: Path, results_path: Optional[Path], stages: list[Stage],
              results: Optional[dict], repo_id: str, license: Optional[str],
              log: Optional[Callable[[str], None]] = None) -> dict:
    """Write the model folder into `tmp`; returns its config.json."""
    from fvlm_cli.model.build import save_model_folder

    save_model_folder(tmp, lm.model, lm.tokenizer, lm.model_cfg, lm.media, lm.chat)
    if chain:
        (tmp / "configs").mkdir()
        for cfg_file, st in chain:
            shutil.copyfile(cfg_file, tmp / st.config_file)
    elif (folder / "configs").is_dir():  # re-exporting an export: keep its configs
        shutil.copytree(folder / "configs", tmp / "configs")
    if results_path is not None:
        shutil.copyfile(results_path, tmp / "results.json")
    conf = json.loads((tmp / "config.json").read_text())
    build_card(conf, stages, results, repo_id=repo_id, license=license).save(tmp / "README.md")
    texts = [*sorted((tmp / "configs").glob("*.yaml")), tmp / "README.md", tmp / "results.json"]
    for f in (t for t in texts if t.is_file()):
        clean, n = redact_secrets(f.read_text(encoding="utf-8"))
        if n:
            f.write_text(clean, encoding="utf-8")
            _say(log, f"{f.relative_to(tmp)}: redacted {n} secret-looking value(s) (a signed URL's query, an "
                      f"Authorization header, a token or key); the paths stay")
    return conf


_SECRETS = [
    # a URL whose query carries credentials (a pre-signed S3 / GCS / Azure SAS link, ?token=...)
    (re.compile(r"(https?://[^\s'\"?]+)\?([^\s'\"]*(?:sig|signature|token|key|credential|secret|x-amz-|x-goog-)"
                r"[^\s'\"]*)", re.I), r"\1?<redacted>"),
    (re.compile(r"(Authorization:\s*)(?:Bearer\s+|Basic\s+|token\s+)?[^\s'\"]+", re.I), r"\1<redacted>"),
    (re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"), "<redacted>"),                       # any Hugging Face token
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "<redacted>"),                   # an AWS access key id
    (re.compile(r"((?:aws_secret_access_key|aws_session_token)\s*[=:]\s*)[^\s'\"]+", re.I), r"\1<redacted>"),
]


def redact_secrets(text: str) -> tuple[str, int]:
    """`text` with credential-looking values replaced by `<redacted>` (the run configs keep the data paths, which
    may be signed URLs or `pipe:` commands with headers); returns (text, how many)."""
    total = 0
    for pattern, repl in _SECRETS:
        text, n = pattern.subn(repl, text)
        total += n
    return text, total


def export_model(source: str | Path, repo_id: str, out: Optional[str | Path] = None, *, license: Optional[str] = None,
                 log: Optional[Callable[[str], None]] = None) -> Export:
    """Export `source` (run dir, checkpoint or model folder) into `out` and validate it (see module doc).

    `out` is replaced only when it is empty or a previous fvlm export; the new folder is assembled beside it
    and moved in place once it has passed validation.
    """
    from fvlm_cli.model.build import find_folder, load_folder

    check_repo_id(repo_id)
    if license:  # before any work: the Hub refuses a card whose licence it does not know
        from fvlm_cli.release.modelcard import check_license

        check_license(license, "--license")
    src = Path(source)
    if not src.exists():
        raise UploadError(f"not found: {src} (give a run dir, a checkpoint or a model folder)")
    folder = find_folder(src)
    run = run_dir_of(src) or run_dir_of(folder)
    out = Path(out) if out else default_out(run, repo_id)
    if _inside(folder, out) or (run is not None and _inside(run, out)):
        raise UploadError(f"--out {out} contains the source {folder}; choose another folder")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not _is_export(out))):
        raise UploadError(f"--out {out} exists and is not an fvlm export; choose an empty or new folder")

    _say(log, f"loading {folder}")
    lm = load_folder(folder, source=str(src))
    chain = training_stages(run or folder)
    stages = [st for _, st in chain] or _stages_from_configs(folder)
    candidates = ([run / "results.json"] if run else []) + [folder / "results.json"]
    results_path = next((p for p in candidates if p.is_file()), None)
    results = None
    if results_path is not None:
        try:
            results = json.loads(results_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UploadError(f"{results_path}: unreadable ({e}); fix or remove it") from None

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    _say(log, f"exporting to {out}")
    try:
        conf = _assemble(tmp, lm, chain, folder, results_path, stages, results, repo_id, license, log)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written folder is never left behind
        raise

    _say(log, "validating: reloading the export and comparing logits in all three modes")
    reference = reference_logits(lm.model)
    tokenizer = lm.tokenizer
    del lm  # one model in memory at a time
    try:
        diffs = validate_export(tmp, reference, tokenizer)
    except UploadError as e:
        raise UploadError(f"{e} (the rejected export is in {tmp})") from None
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return Export(folder=out, source=folder, run_dir=run, stages=stages, max_diff=diffs,
                  num_parameters=int(conf.get("num_parameters", 0)))


# ---- upload --------------------------------------------------------------------------------
def hf_token() -> Optional[str]:
    """HF_TOKEN, else the token saved by `hf auth login`; None when there is none."""
    from huggingface_hub import get_token

    return os.environ.get("HF_TOKEN") or get_token() or None


def require_token() -> str:
    """The token, or a one-line UploadError before any network call."""
    token = hf_token()
    if not token:
        raise UploadError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --dry-run to export only)")
    return token


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _scrub(text: str, token: str) -> str:
    text = text.replace(token, "***") if token else text
    return re.sub(r"(Bearer\s+)\S+", r"\1***", text)


def _token_in_files(folder: Path, token: str) -> Optional[Path]:
    needle = token.encode()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix != ".safetensors" and needle in p.read_bytes():
            return p
    return None


STALE = ["configs/*", "results.json"]  # what every export rewrites: remote copies it lacks are deleted on upload


def check_visibility(api, repo_id: str, repo_type: str, private: Optional[bool]) -> None:
    """create_repo(exist_ok=True) leaves an existing repo's visibility as it is: --private (or --public) on one that
    is not so is refused before anything is uploaded."""
    if private is None:
        return
    is_private = bool(getattr(api.repo_info(repo_id, repo_type=repo_type), "private", False))
    if is_private != private:
        want, have = ("private", "public") if private else ("public", "private")
        raise UploadError(f"{repo_id} already exists and is {have}; --{want} does not change an existing repo "
                          f"(change it in the repo's settings, or leave the flag out)")


def push_folder(folder: str | Path, repo_id: str, *, private: Optional[bool] = None, commit_message: Optional[str] = None,
                token: Optional[str] = None, log: Optional[Callable[[str], None]] = None) -> str:
    """Create `repo_id` (exist_ok) and upload `folder` to it; returns the commit URL.

    The token (argument, HF_TOKEN or the login cache) is passed to huggingface_hub only: it is never printed,
    logged or written, and a folder that contains it is refused. Errors are one-line UploadErrors naming the
    endpoint; the folder stays where it is.
    """
    from huggingface_hub import HfApi

    from fvlm_cli import __version__

    check_repo_id(repo_id)
    folder = Path(folder)
    token = token or require_token()
    leaked = _token_in_files(folder, token)
    if leaked is not None:
        raise UploadError(f"{leaked} contains your Hugging Face token; remove it before uploading")
    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint, token=token, library_name="fvlm", library_version=__version__)
    try:
        _say(log, f"creating {repo_id} on {endpoint}")
        # private=None: a new repo gets its owner's default visibility (an organisation may default to private)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        check_visibility(api, repo_id, "model", private)
        _say(log, f"uploading {folder}")
        # files an earlier export made that this one does not (a shorter stage chain, no results) go in the same
        # commit; files a user added on the Hub (a LICENSE, say) stay
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                 commit_message=commit_message or "Upload fvlm model", delete_patterns=STALE)
    except FvlmError:
        raise
    except Exception as e:  # httpx / requests / HfHubHTTPError / OSError: one line, never a traceback
        lines = str(e).strip().splitlines()
        first = lines[0] if lines else type(e).__name__
        raise UploadError(f"upload to {endpoint} failed ({type(e).__name__}: {_scrub(first, token)[:300]}); "
                          f"the exported folder is kept in {folder}") from None
    return getattr(info, "commit_url", None) or str(info)
