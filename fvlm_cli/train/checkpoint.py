"""Checkpoints: a model folder plus `trainer_state.pt`, written atomically.

    RUN/checkpoints/step-000100/   config.json, model.safetensors, tokenizer, trainer_state.pt, run_config.yaml
    RUN/checkpoints/latest -> step-000100     (symlink swapped with os.replace: a kill never leaves it broken)
    RUN/checkpoints/best   -> step-000080     (lowest validation metric)

A checkpoint directory is written under a temporary name and renamed into place only when complete. A save
that fails (a full disk, an I/O error) removes its partial `.step-*.tmp` folder and stops with a message naming
the last good checkpoint; `--resume` uses the newest checkpoint that reads back, saying which it skipped.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from fvlm_cli import config as cfglib
from fvlm_cli.errors import TrainingError


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
             "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2]),
             "numpy_gauss": [int(np_state[3]), float(np_state[4])], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(s: dict) -> None:
    random.setstate((3, tuple(s["python"]), s["python_pos"]))
    np.random.set_state(("MT19937", s["numpy_keys"].numpy().astype(np.uint32), s["numpy_pos"], s["numpy_gauss"][0],
                         s["numpy_gauss"][1]))
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _swap_link(link: Path, target: str) -> None:
    tmp = link.with_name(link.name + ".tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def save(run_dir: Path, step: int, model, tokenizer, run_cfg, state: dict, *, keep_last: int,
         metric: float | None = None) -> Path:
    """Write checkpoint `step`, point `latest` at it, update `best` if `metric` improves, prune old ones."""
    from fvlm_cli.model.build import save_model_folder

    ck = run_dir / "checkpoints"
    ck.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    for stale in ck.glob(".step-*.tmp"):  # left by a killed save: never complete, never pointed to
        shutil.rmtree(stale, ignore_errors=True)
    tmp = ck / f".{name}.tmp"
    try:
        save_model_folder(tmp, model, tokenizer, run_cfg.model, run_cfg.media, run_cfg.chat)
        state = dict(state, step=step, rng=_rng_state(), metric=metric)
        torch.save(state, tmp / "trainer_state.pt")
        (tmp / "run_config.yaml").write_text(cfglib.dump(run_cfg))
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a short write as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        raise TrainingError(_save_failure(ck, name, e)) from None
    final = ck / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _swap_link(ck / "latest", name)
    best = _read_best(ck)
    if metric is not None and (best is None or metric < best[1]):
        _swap_link(ck / "best", name)
        (ck / "best.json").write_text(json.dumps({"step": step, "metric": metric}))
    _prune(ck, keep_last)
    return final


def _save_failure(ck: Path, name: str, e: BaseException) -> str:
    try:
        free = shutil.disk_usage(ck).free
    except OSError:
        free = -1
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        what = "the disk is full (No space left on device)"
    else:
        what = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
        if free >= 0:
            what += f"; {free / 2**20:.0f} MiB free there"
    good = latest(ck.parent)
    keep = (f"the last good checkpoint is {good.name} (checkpoints/latest): free space, then rerun with --resume"
            if good else "no earlier checkpoint exists")
    return f"could not write checkpoint {name} in {ck}: {what}; removed the partial .{name}.tmp; {keep}"


def _read_best(ck: Path):
    p = ck / "best.json"
    if not p.exists():
        return None
    d = json.loads(p.read_text())
    return d["step"], d["metric"]


def _prune(ck: Path, keep_last: int) -> None:
    steps = sorted(p for p in ck.glob("step-*") if p.is_dir())
    keep = {p.name for p in steps[-max(1, keep_last):]}
    for link in ("latest", "best"):
        if (ck / link).is_symlink():
            keep.add(os.readlink(ck / link))
    for p in steps:
        if p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)


def latest(run_dir: Path) -> Path | None:
    link = run_dir / "checkpoints" / "latest"
    return link.resolve() if link.exists() else None


def load_state(ckpt: Path) -> dict:
    path = ckpt / "trainer_state.pt"
    if not path.exists():
        raise TrainingError(f"{ckpt}: no trainer_state.pt; cannot resume from it")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_for_resume(run_dir: Path) -> tuple[Path, dict, dict, list[tuple[str, str]]]:
    """(checkpoint, weights, trainer state, [(skipped checkpoint, why)]): the newest checkpoint that reads back.

    `latest` first, then the other step-* folders, newest first. TrainingError when none is readable."""
    from fvlm_cli.model.build import _read_weights

    ck = run_dir / "checkpoints"
    candidates = sorted((p for p in ck.glob("step-*") if p.is_dir()), key=lambda p: p.name, reverse=True)
    head = latest(run_dir)
    if head is not None and head in candidates:
        candidates.remove(head)
        candidates.insert(0, head)
    if not candidates:
        raise TrainingError(f"--resume: no checkpoint in {ck}")
    skipped: list[tuple[str, str]] = []
    for path in candidates:
        try:
            weights = _read_weights(path)
            state = load_state(path)
            if "step" not in state or "loader" not in state:
                raise TrainingError("trainer_state.pt lacks the step or the data position")
            return path, weights, state, skipped
        except Exception as e:
            skipped.append((path.name, f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"))
    tried = "; ".join(f"{n}: {why}" for n, why in skipped)
    raise TrainingError(f"--resume: no readable checkpoint in {ck} ({tried})")


def restore_rng(state: dict) -> None:
    _set_rng_state(state["rng"])
