"""`fvlm precompute SOURCE`: decode, sample and crop frames, attach text, write webdataset shards."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fvlm_cli.commands._common import ConfigOpt, JsonOpt, PrintConfigOpt, flag
from fvlm_cli.settings import PrecomputeConfig as P

# flag -> PrecomputeConfig key: the defaults live once, in fvlm_cli/settings.py
FLAGS = {
    "input": "input", "out": "out", "workers": "workers", "part": "part", "fps": "media.fps",
    "max_frames": "media.max_frames", "image_size": "media.image_size", "shard_size": "shard_size", "limit": "limit",
    "seed": "seed", "split": "split", "cache_dir": "cache_dir", "max_fail_ratio": "max_fail_ratio",
    "retry_failed": "retry_failed", "verify": "verify", "timeout": "download.timeout", "max_download_mb": "download.max_mb",
    "retries": "download.retries",
}

SOURCES_HELP = ("webvid | openvid | videos | cauldron | llava-video | smoltalk | rlaif-v | mvbench | video-mme | "
                "pope | scienceqa | mlvu | synthetic")


def precompute(
    ctx: typer.Context,
    source: str = typer.Argument(..., help=SOURCES_HELP),
    input: Optional[str] = flag(P, "input", "--input", "-i", help="Local path (a folder as `hf download --local-dir` "
                                "leaves it) or Hub dataset id; never written to"),
    out: Optional[Path] = flag(P, "out", "--out", "-o"),
    workers: Optional[int] = flag(P, "workers", "--workers", "-w"),
    part: Optional[str] = flag(P, "part", "--part"),
    fps: Optional[float] = flag(P, "media.fps", "--fps"),
    max_frames: Optional[int] = flag(P, "media.max_frames", "--max-frames"),
    image_size: Optional[int] = flag(P, "media.image_size", "--image-size"),
    shard_size: Optional[int] = flag(P, "shard_size", "--shard-size"),
    limit: Optional[int] = flag(P, "limit", "--limit"),
    max_fail_ratio: Optional[float] = flag(P, "max_fail_ratio", "--max-fail-ratio"),
    seed: Optional[int] = flag(P, "seed", "--seed"),
    split: Optional[str] = flag(P, "split", "--split"),
    cache_dir: Optional[str] = flag(P, "cache_dir", "--cache-dir", help=(
        "Where Hub downloads go and where tar.gz video archives (LLaVA-Video) are extracted once: that costs "
        "about the archives' size again on disk; zips are read in place and cost nothing")),
    timeout: Optional[float] = flag(P, "download.timeout", "--timeout"),
    max_download_mb: Optional[float] = flag(P, "download.max_mb", "--max-download-mb"),
    retries: Optional[int] = flag(P, "download.retries", "--retries"),
    retry_failed: Optional[bool] = flag(P, "retry_failed", "--retry-failed/--no-retry-failed"),
    verify: Optional[bool] = flag(P, "verify", "--verify/--no-verify"),
    config_file: Optional[str] = ConfigOpt,
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Source knob or option: --set n_videos=50 (repeatable)."),
    print_config: bool = PrintConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Turn a dataset into webdataset shards (resumable, parallel, splittable with --part).

    Archives are read where they are: zip members in place (split zip parts as one stream), tar.gz extracted
    once into --cache-dir. A run in which every input fails exits 2 with the top reasons.
    """
    import json

    from fvlm_cli import config
    from fvlm_cli.commands._common import flag_values
    from fvlm_cli.data.precompute import parse_part, run_config
    from fvlm_cli.errors import DataError

    data = config.read_yaml(config_file) if config_file else {}
    data["source"] = source
    for key, value in flag_values(ctx, FLAGS).items():  # flags given on the command line win over --config
        config.assign(data, key, value)
    for text in set_ or []:
        path, value = config.parse_override(text)
        if path[0] not in P.__dataclass_fields__:  # not an option: a knob of the source (n_videos, videos_dir...)
            path = ["extra", *path]
        config.assign(data, ".".join(path), value)
    cfg = config.from_dict(P, data)
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
