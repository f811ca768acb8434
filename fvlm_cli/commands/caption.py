"""`fvlm caption INPUT...`: caption or answer a question about videos and images, from one file to a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fvlm_cli.commands._common import DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, flag
from fvlm_cli.infer.settings import CaptionConfig

# flag -> CaptionConfig key: the defaults live once, in fvlm_cli/infer/settings.py
CAPTION_FLAGS = {"mode": "generate.mode", "prompt": "generate.prompt", "max_new_tokens": "generate.max_new_tokens",
                 "temperature": "generate.temperature", "top_p": "generate.top_p",
                 "repetition_penalty": "generate.repetition_penalty", "order": "generate.order", "seed": "generate.seed",
                 "batch_size": "batch_size", "workers": "workers", "decode_timeout": "decode_timeout", "out": "out",
                 "gpus": "gpus"}

EPILOG = ("Exit status: 0 when every input was captioned; 2 when any input failed (each failure is one line on "
          "stderr, a {\"input\", \"error\"} JSON line with --json, and a row of OUT.failures.jsonl with --out; every "
          "other input is still captioned) or on a usage error; 1 on an internal error.")


def caption(
    ctx: typer.Context,
    inputs: List[str] = typer.Argument(..., help="Videos/images, folders (searched recursively), JSONL/CSV/TXT lists "
                                       "of paths (with optional id and prompt), or shard sets (a folder with "
                                       "manifest.json, or .tar shards)."),
    model: str = ModelOpt,
    mode: Optional[str] = flag(CaptionConfig, "generate.mode", "--mode"),
    prompt: Optional[str] = flag(CaptionConfig, "generate.prompt", "--prompt", "-p"),
    max_new_tokens: Optional[int] = flag(CaptionConfig, "generate.max_new_tokens", "--max-new-tokens"),
    temperature: Optional[float] = flag(CaptionConfig, "generate.temperature", "--temperature"),
    top_p: Optional[float] = flag(CaptionConfig, "generate.top_p", "--top-p"),
    repetition_penalty: Optional[float] = flag(CaptionConfig, "generate.repetition_penalty", "--repetition-penalty"),
    order: Optional[str] = flag(CaptionConfig, "generate.order", "--order"),
    seed: Optional[int] = flag(CaptionConfig, "generate.seed", "--seed"),
    out: Optional[Path] = flag(CaptionConfig, "out", "--out", "-o"),
    batch_size: Optional[int] = flag(CaptionConfig, "batch_size", "--batch-size"),
    workers: Optional[int] = flag(CaptionConfig, "workers", "--workers"),
    decode_timeout: Optional[float] = flag(CaptionConfig, "decode_timeout", "--decode-timeout"),
    gpus: Optional[int] = flag(CaptionConfig, "gpus", "--gpus"),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress",
                                            help="Progress (done/failed/rate/ETA) on stderr (default: with --out)."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Caption or answer questions about videos and images: one line (or JSON line) per input.

    With --out FILE.jsonl results are appended as they finish and a re-run skips inputs already there."""
    import json

    from fvlm_cli import config as cfglib
    from fvlm_cli.commands._common import flag_values
    from fvlm_cli.errors import FvlmError
    from fvlm_cli.settings import MODES

    data: dict = {}
    for key, value in flag_values(ctx, CAPTION_FLAGS).items():
        cfglib.assign(data, key, value)
    cfg = cfglib.from_dict(CaptionConfig, data)
    if cfg.generate.mode not in MODES:
        raise FvlmError(f"--mode {cfg.generate.mode!r}: use one of {', '.join(MODES)}")
    if cfg.generate.order not in (None, "video_first", "question_first"):
        raise FvlmError(f"--order {cfg.generate.order!r}: use video_first or question_first")
    if cfg.gpus < 1 or cfg.batch_size < 1 or cfg.workers < 0 or cfg.decode_timeout < 0:
        raise FvlmError("--gpus and --batch-size must be at least 1, --workers and --decode-timeout at least 0")

    from rich.console import Console
    from rich.markup import escape

    from fvlm_cli.infer.captioner import json_line
    from fvlm_cli.infer.inputs import resolve

    errc = Console(stderr=True, highlight=False, soft_wrap=True)

    def show(rec: dict) -> None:
        if "error" in rec:
            errc.print(f"[bold red]error:[/] {escape(rec['input'])}: {escape(rec['error'])}")
        if "skipped" in rec:
            return
        if json_out:
            typer.echo(json_line(rec), nl=False)
        elif "text" in rec and cfg.out is None:  # one line per input, whatever the caption holds
            typer.echo(f"{rec['input']}\t{' '.join(rec['text'].split())}")

    found = resolve(inputs)
    out_path = Path(cfg.out) if cfg.out else None
    from fvlm_cli.infer.captioner import ResultWriter, read_done

    done = read_done(out_path)
    units = [u for u in found.units if not (hasattr(u, "key") and u.key in done)]
    already = found.count_done(done)
    from fvlm_cli.progress import Progress

    bar = Progress(enabled=progress if progress is not None else out_path is not None, prefix="fvlm caption",
                   unit="captions")
    total = found.known_total
    bar.add("captions", None if total is None else total + len(found.errors), completed=already if total else 0)
    writer = ResultWriter(out_path, show, bar)
    try:
        for rec in found.errors:
            writer(rec)
        if units:
            summary = _run(model, device, dtype, units, cfg, writer, done)
        else:
            from fvlm_cli.infer.captioner import Summary

            summary = Summary()
    finally:
        writer.close()
        bar.close()
    failed = summary.failed + len(found.errors)
    if out_path is not None:
        errc.print(f"{summary.captioned} captioned, {failed} failed, {already} already in {out_path}"
                   + (f", {summary.skipped} text-only skipped" if summary.skipped else ""), markup=False)
    if failed:
        raise_failed(failed)


def raise_failed(failed: int) -> None:
    """Exit 2 after isolated failures; with --debug an exception instead (its traceback is the point of --debug)."""
    import os

    if os.environ.get("FVLM_DEBUG") == "1":
        from fvlm_cli.errors import FvlmError

        raise FvlmError(f"{failed} input(s) failed (see the lines above)")
    raise typer.Exit(2)


def _run(model, device, dtype, units, cfg, writer, done):
    from fvlm_cli.infer.captioner import caption_on_devices, caption_units, device_names

    if cfg.gpus > 1:
        return caption_on_devices(model, device_names(device, cfg.gpus), dtype, units, cfg, writer, done)
    from fvlm_cli.model.build import load_model

    lm = load_model(model, device=device, dtype=dtype)
    return caption_units(lm, units, cfg, writer, done)
