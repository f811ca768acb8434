"""Small synthetic WebDataset shards in the SPEC §3.2 layout, written with tarfile + PIL (independent of the
precompute writer, so loader tests do not depend on it).

    samples = make_samples(n_video=6, n_image=2, n_text=3, size=16)
    paths = write_shards(tmp_path / "set", samples, per_shard=4)      # + manifest.json

Each frame is a solid colour that encodes (sample number, frame number), so a test can tell which frame
ended up where after JPEG compression (`frame_code` reads it back).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle"]
DIRECTIONS = ["left", "right", "up", "down"]


def solid_frames(sample: int, n: int, size: int) -> np.ndarray:
    """[n, size, size, 3] uint8; frame t of sample s has colour (40 + 20*t, 16*(s % 16), 200)."""
    frames = np.zeros((n, size, size, 3), dtype=np.uint8)
    for t in range(n):
        frames[t] = (min(255, 40 + 20 * t), (16 * sample) % 256, 200)
    return frames


def frame_code(frame_uint8: np.ndarray) -> tuple[int, int]:
    """(frame number, sample number mod 16) read back from a decoded solid frame [S, S, 3]."""
    r, g, _ = frame_uint8.reshape(-1, 3).mean(0)
    return int(round((r - 40) / 20)), int(round(g / 16)) % 16


def make_samples(n_video: int = 0, n_image: int = 0, n_text: int = 0, *, frames: Sequence[int] = (2, 3, 4),
                 size: int = 16, source: str = "synthetic", prefix: str = "", dpo: bool = False,
                 media_type: bool = True, long_question: Optional[int] = None, start: int = 0) -> list[dict]:
    """Samples as {"id", "frames": [T, S, S, 3] uint8, "record": json dict}; video i has frames[i % len] frames.

    `media_type=False` leaves the optional "media_type" key out (loaders then infer image from one frame).
    `long_question=k` makes every k-th sample's question very long (for truncation tests)."""
    out = []
    kinds = ["video"] * n_video + ["image"] * n_image + ["text"] * n_text
    for j, kind in enumerate(kinds):
        i = start + j
        colour, shape, direction = COLOURS[i % 4], SHAPES[i % 3], DIRECTIONS[(i // 3) % 4]
        if kind == "video":
            t = frames[j % len(frames)]
            question, answer = "Describe this video.", f"A {colour} {shape} moves {direction}."
        elif kind == "image":
            t = 1
            question, answer = "What colour is the shape?", f"The shape is {colour}."
        else:
            t = 0
            question, answer = f"What is {i} plus one?", f"It is {i + 1}."
        if long_question and j % long_question == 0:
            question = " ".join(["please describe the video in great detail"] * 60)
        sid = f"{prefix}{kind}{i:04d}"
        record = {
            "id": sid, "source": source, "kind": "dpo" if dpo else ("text" if kind == "text" else "sft"),
            "frame_count": t, "timestamps": [float(k) for k in range(t)],
            "messages": [{"role": "user", "content": question}]
            + ([] if dpo else [{"role": "assistant", "content": answer}]),
        }
        if media_type and kind != "text":
            record["media_type"] = kind
        if dpo:
            record["chosen"], record["rejected"] = answer, f"A {COLOURS[(i + 1) % 4]} star."
        out.append({"id": sid, "frames": solid_frames(i, t, size), "record": record})
    return out


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o444
    tar.addfile(info, io.BytesIO(data))


def write_shards(out_dir: str | Path, samples: Sequence[dict], *, per_shard: int = 4, manifest: bool = True,
                 name: str = "shard") -> list[Path]:
    """Write `samples` into `out_dir/{name}-000000.tar`, ... (`per_shard` each) and, optionally, manifest.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, entries = [], []
    for n, start in enumerate(range(0, len(samples), per_shard)):
        path = out / f"{name}-{n:06d}.tar"
        chunk = samples[start:start + per_shard]
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for k, s in enumerate(chunk):
                key = f"{start + k:09d}-{s['id']}"
                for t, frame in enumerate(s["frames"]):
                    buf = io.BytesIO()
                    Image.fromarray(frame).save(buf, format="JPEG", quality=95)
                    _add(tar, f"{key}.{t:03d}.jpg", buf.getvalue())
                _add(tar, f"{key}.json", json.dumps(s["record"]).encode())
        paths.append(path)
        entries.append({"name": path.name, "path": path.name, "samples": len(chunk)})
    if manifest:
        (out / "manifest.json").write_text(json.dumps({"format": "fvlm-shards/1", "samples": len(samples),
                                                       "shards": entries}, indent=1))
    return paths


def loader_config(*paths, size: int = 8, **data):
    """A RunConfig reading `paths` as data.train at frame size `size`, in-process (0 workers), small shuffle
    blocks and fast retries; `data` overrides any data.* key."""
    from fvlm_cli.settings import RunConfig, ShardSet

    cfg = RunConfig()
    cfg.model.image_size = size
    cfg.data.train = [ShardSet(path=str(p)) for p in paths]
    cfg.data.num_workers, cfg.data.shuffle_buffer, cfg.data.retry_backoff = 0, 3, 0.01
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


# The shipped tiny stage 1 freezes DINO and the connector; tests that use its config as a small training config
# train, resume and all-reduce the whole model, as stage 2 does.
WHOLE_MODEL = ("optim.dino.frozen=false", "optim.connector.frozen=false")
WHOLE_MODEL_FLAGS = [a for kv in WHOLE_MODEL for a in ("--set", kv)]
