"""`fvlm precompute SOURCE`: decode, sample and crop frames, attach text, write webdataset shards."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fvlm_cli.commands._common import ConfigOpt, JsonOpt, PrintConfigOpt

# option name -> PrecomputeConfig key (the flags' defaults are the config's defaults)
_FLAGS = {
    "input": "input", "out": "out", "workers": "workers", "part": "part", "fps": "fps", "max_frames": "max_frames",
    "image_size": "image_size", "shard_size": "shard_size", "limit": "limit", "seed": "seed", "split": "split",
    "cache_dir": "cache_dir", "max_fail_ratio": "max_fail_ratio", "retry_failed": "retry_failed",
    "timeout": "download.timeout", "max_download_mb": "download.max_mb", "retries": "download.retries",
}


def precompute(
    ctx: typer.Context,
    source: str = typer.Argument(..., help="webvid | openvid | videos | cauldron | llava-video | smoltalk | rlaif-v | "
                                           "mvbench | video-mme | pope | scienceqa | mlvu | synthetic"),
    input: Optional[str] = typer.Option(None, "--input", "-i", help="Local path or Hub dataset id (synthetic: none)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (shards, manifest.json, failures.jsonl)."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help="Decoding processes (default: min(4, cpus)); 0 = in-process."),
    part: str = typer.Option("0/1", "--part", help="i/n: this machine's share (samples with index % n == i)."),
    fps: float = typer.Option(1.0, "--fps", help="Frames sampled per second of video."),
    max_frames: int = typer.Option(64, "--max-frames", help="Frame cap; longer videos are sampled uniformly."),
    image_size: int = typer.Option(224, "--image-size", help="Square frame size (shorter side resize + centre crop)."),
    shard_size: int = typer.Option(1000, "--shard-size", help="Samples per tar."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N samples of the source."),
    max_fail_ratio: Optional[float] = typer.Option(None, "--max-fail-ratio", help="Exit 2 if failures/samples exceeds this (shards are kept)."),
    seed: int = typer.Option(0, "--seed", help="Seed for sources that sample or generate."),
    split: Optional[str] = typer.Option(None, "--split", help="Dataset split/subset, where the source has several."),
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="Where downloads and Hub snapshots go."),
    timeout: float = typer.Option(30.0, "--timeout", help="Download timeout (seconds without data)."),
    max_download_mb: float = typer.Option(512.0, "--max-download-mb", help="Size cap per downloaded video (MiB)."),
    retries: int = typer.Option(3, "--retries", help="Download retries on 5xx/timeouts (with backoff)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Redo finished shards that recorded failures."),
    config_file: Optional[str] = ConfigOpt,
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Source knob or option: --set n_videos=50 (repeatable)."),
    print_config: bool = PrintConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Turn a dataset into webdataset shards (resumable, parallel, splittable with --part)."""
    import json

    from fvlm_cli import config
    from fvlm_cli.data.precompute import PrecomputeConfig, parse_part, run_config
    from fvlm_cli.errors import DataError

    data = config.read_yaml(config_file) if config_file else {}
    data["source"] = source
    given = {k: v for k, v in locals().items() if k in _FLAGS}
    for name, key in _FLAGS.items():  # flags given on the command line win over --config; defaults do not
        if ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP"):
            value = given[name]
            _assign(data, key, str(value) if isinstance(value, Path) else value)
    for text in set_ or []:
        path, value = config.parse_override(text)
        names = {f for f in PrecomputeConfig.__dataclass_fields__}
        if path[0] not in names:  # not an option: a knob of the source (synthetic n_videos, webvid videos_dir, ...)
            path = ["extra", *path]
        _assign(data, ".".join(path), value)
    cfg = config.from_dict(PrecomputeConfig, data)
    if print_config:
        typer.echo(config.dump(cfg), nl=False)
        return
    parse_part(cfg.part)  # bad usage fails before anything is read or written
    try:
        summary = run_config(cfg, progress=True)
    except DataError as e:
        if json_out and hasattr(e, "summary"):
            typer.echo(json.dumps(e.summary))
        raise
    if json_out:
        typer.echo(json.dumps(summary))


def _assign(data: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
