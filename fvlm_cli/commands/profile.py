"""`fvlm profile train|infer|data|bench`: throughput, time split, memory and MFU (SPEC §9); table + JSON."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fvlm_cli.commands._common import DeviceOpt, DtypeOpt, JsonOpt, PrintConfigOpt, SetOpt


def profile(
    target: str = typer.Argument(..., help="train | infer | data | bench", show_default=False),
    preset: str = typer.Option("tiny", "--preset", "-p", help="Model preset, random init (tiny, fvlm-135m, ...)."),
    batch_size: int = typer.Option(4, "--batch-size", "-b", help="Samples per step (bench: questions per fast batch)."),
    frames: int = typer.Option(8, "--frames", "-T", help="Frames per sample (data: the most frames; counts vary T/4..T)."),
    text_tokens: int = typer.Option(64, "--text-tokens", "-S", help="Text tokens per sample (infer/bench: prompt tokens)."),
    steps: int = typer.Option(5, "--steps", "-n", help="Timed steps (infer: runs per mode; data: batches; bench: runs)."),
    warmup: int = typer.Option(1, "--warmup", "-w", help="Untimed steps first (compile, allocator, lazy inits)."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    mode: Optional[str] = typer.Option(None, "--mode", help="coarse_only | coarse_fine | autoregressive (infer/bench: or all) (default: train coarse_fine, else all)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="JSON result (default: runs/profile/TARGET-PRESET-DEVICE.json)."),
    sets: Optional[List[str]] = SetOpt,
    print_config: bool = PrintConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Profile training steps, generation, the data loader or MCQ scoring on synthetic inputs.

    --set takes the training config's keys (model.gradient_checkpointing=true, model.attn_implementation=eager,
    optim.fused=false, train.tf32=false, train.compile=model, data.frame_budget=64) and the profile switches
    (profile.ragged=true, profile.compile=query, profile.pin_memory=true, profile.split=false,
    profile.workers=[0,1,2], ...). Reference variants: benchmarks/profile_variant.py.
    """
    import json

    from fvlm_cli.profile import ProfileArgs, TARGETS, load_config, run_profile

    from fvlm_cli.errors import FvlmError

    if target not in TARGETS:
        raise FvlmError(f"unknown profile target {target!r}; use one of {', '.join(TARGETS)}")
    args = ProfileArgs(preset=preset, batch_size=batch_size, frames=frames, text_tokens=text_tokens, steps=steps,
                       warmup=warmup, device=device, dtype=dtype, mode=mode, sets=list(sets or []))
    if print_config:
        from fvlm_cli import config as cfglib

        typer.echo(cfglib.dump(load_config(args)), nl=False)
        return
    res = run_profile(target, args)
    path = out or Path("runs/profile") / f"{target}-{preset}-{res['device_type']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1) + "\n")
    if json_out:
        typer.echo(json.dumps(res))
        return
    _render(res, path)


def _f(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if abs(x) >= 1e4:
            return f"{x:,.0f}"
        return f"{x:.2e}" if 0 < abs(x) < 1e-3 else f"{x:.{digits}f}"
    return str(x)


def _render(res: dict, path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = res["target"]
    title = (f"profile {t}: {res['preset']} on {res['device_name'] or res['device']} ({res['dtype']}, "
             f"{res['threads']} threads), B={res['batch_size']} T={res['frames']} S={res['text_tokens']}")
    table = Table(title=title, title_justify="left")
    if t == "train":
        table.add_column("metric")
        table.add_column("value", justify="right")
        rows = [("mode", res["mode"]), ("step s (median)", _f(res["step_s"], 4)), ("first step s", _f(res["first_step_s"], 4)),
                ("samples/s", _f(res["samples_per_s"], 2)), ("frames/s", _f(res["frames_per_s"], 1)),
                ("tokens/s", _f(res["tokens_per_s"], 0)), ("achieved TFLOP/s", _f(res["achieved_tflops"], 3)),
                ("MFU", _f(res["mfu"], 3)), ("activations GB (saved for backward)", _f(res["activation_gb"], 3)),
                (f"peak memory GB ({res['memory_kind']})", _f(res["peak_memory_gb"], 3))]
        rows += [(f"  {k} s", f"{_f(v, 4)}  ({res['split_fraction'][k]:.0%})") for k, v in res["split_s"].items()]
        for r in rows:
            table.add_row(*r)
    elif t == "infer":
        for col in ("mode", "first token s", "total s", "decode tok/s", "tok/s", "prefill tok/s"):
            table.add_column(col, justify="left" if col == "mode" else "right")
        for m, r in res["modes"].items():
            table.add_row(m, _f(r["first_token_s"], 4), _f(r["total_s"], 4), _f(r["decode_tokens_per_s"], 1),
                          _f(r["tokens_per_s"], 1), _f(r["prefill_tokens_per_s"], 0))
    elif t == "data":
        for col in ("workers", "samples/s", "per worker", "frames/s", "first batch s", "mean batch", "padded frames"):
            table.add_column(col, justify="right")
        for r in res["workers"].values():
            table.add_row(str(r["workers"]), _f(r["samples_per_s"], 1), _f(r["samples_per_s_per_worker"], 1),
                          _f(r["frames_per_s"], 0), _f(r["first_batch_s"], 3), _f(r["mean_batch_size"], 1),
                          f"{r['padded_frame_fraction']:.0%}")
    else:
        for col in ("path", "s/question", "vs naive"):
            table.add_column(col, justify="left" if col == "path" else "right")
        spq = res["seconds_per_question"]
        table.add_row("naive (re-encode)", _f(spq["naive"], 4), "1.0x")
        table.add_row(f"fast, batch {res['batch_size']}", _f(spq["fast"], 4), f"{res['speedup']:.1f}x")
    console.print(table)
    console.print(f"wrote {path}", style="dim")
