"""`fvlm bench NAME...`: benchmarks in the three modes (results.json, samples.jsonl, results.md; resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fvlm_cli.commands._common import ConfigOpt, JsonOpt, PrintConfigOpt, SetOpt

BENCH_NAMES = "val-loss | mvbench | video-mme | pope | scienceqa | mlvu | captioning | synthetic"


def bench(
    names: Optional[List[str]] = typer.Argument(None, help=f"Benchmarks: {BENCH_NAMES}.", show_default=False),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Hub id, model folder, checkpoint, run dir, or preset (tiny, fvlm-135m, ...) (default: sanps/fVLM-135M)."),
    mode: Optional[str] = typer.Option(None, "--mode", help="coarse_only | coarse_fine | autoregressive | all (or a comma list) (default: all)."),
    method: Optional[str] = typer.Option(None, "--method", help="MCQ scoring: loglik | generate | both (default: both)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N questions of each benchmark."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output dir; re-run with the same dir to resume (default: runs/bench)."),
    order: Optional[str] = typer.Option(None, "--order", help="video_first | question_first (default: the model's)."),
    data: Optional[List[str]] = typer.Option(None, "--data", help="Shards of a benchmark: NAME=DIR (repeatable); a bare DIR with one benchmark (default: data/NAME)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Questions scored together (default: 8)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="MCQ generate: answer length cap (default: 8)."),
    meteor: Optional[bool] = typer.Option(None, "--meteor/--no-meteor", help="captioning: METEOR (needs Java) (default: on)."),
    answer_format: Optional[str] = typer.Option(None, "--answer-format", help="loglik continuation: letter | text (default: letter)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N (default: auto)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto | bf16 | fp32 (default: auto)."),
    config_file: Optional[str] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
    print_config: bool = PrintConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Benchmark a model in its three modes: MCQ by log-likelihood and/or generation, captioning, val-loss."""
    import json

    from fvlm_cli import config as cfglib
    from fvlm_cli.errors import FvlmError
    from fvlm_cli.eval.bench import BenchConfig, resolve_names, run_config

    data_cfg = cfglib.read_yaml(config_file) if config_file else {}
    flags = {"model": model, "mode": mode, "method": method, "limit": limit, "out": None if out is None else str(out),
             "order": order, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
             "answer_format": answer_format, "meteor": meteor, "device": device, "dtype": dtype}
    data_cfg.update({k: v for k, v in flags.items() if v is not None})
    if names:
        data_cfg["benchmarks"] = list(names)
    cfg = cfglib.from_dict(BenchConfig, cfglib.apply_overrides(data_cfg, sets, BenchConfig))
    cfg.benchmarks = resolve_names(cfg.benchmarks)
    for item in data or []:
        if "=" in item:
            key, _, path = item.partition("=")
        elif len(cfg.benchmarks) == 1:
            key, path = cfg.benchmarks[0], item
        else:
            raise FvlmError(f"--data {item!r}: with several benchmarks write NAME=DIR (e.g. --data synthetic=data/synth/bench)")
        cfg.data[resolve_names([key.strip()])[0]] = path.strip()
    if print_config:
        typer.echo(cfglib.dump(cfg), nl=False)
        return
    results = run_config(cfg, progress=True)
    if json_out:
        typer.echo(json.dumps(results))
        return
    _render(results, cfg.out)


def _render(results: dict, out: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for bench, res in results["benchmarks"].items():
        table = Table(title=f"{bench}  ({res.get('questions', '?')} samples)", title_justify="left")
        rows = [(m, me, leaf) for m, v in res.items() if isinstance(v, dict) for me, leaf in v.items()]
        if not rows:
            continue
        first = rows[0][2]
        if "accuracy" in first:
            extra = [k for k in ("f1", "yes_ratio") if k in first]
            for col in ["mode", "method", "accuracy %", *extra, "n", "seconds"]:
                table.add_column(col, justify="left" if col in ("mode", "method") else "right")
            for m, me, leaf in rows:
                acc = "—" if leaf["accuracy"] is None else f"{100 * leaf['accuracy']:.1f}"
                if leaf.get("se") is not None:
                    acc += f" ± {100 * leaf['se']:.1f}"
                table.add_row(m, me, acc, *[f"{100 * leaf[k]:.1f}" for k in extra], str(leaf["total"]),
                              f"{leaf['seconds']:.1f}")
            if res.get("chance") is not None:
                table.caption = f"random chance {100 * res['chance']:.1f}%"
        elif "CIDEr" in first:
            for col in ["mode", "method", "CIDEr", "BLEU-4", "ROUGE-L", "METEOR", "n", "seconds"]:
                table.add_column(col, justify="left" if col in ("mode", "method") else "right")
            for m, me, leaf in rows:
                cells = ["n/a" if leaf.get(k) is None else f"{100 * leaf[k]:.1f}" for k in ("CIDEr", "BLEU-4", "ROUGE-L", "METEOR")]
                table.add_row(m, me, *cells, str(leaf["n"]), f"{leaf['seconds']:.1f}")
            notes = list(dict.fromkeys(n for _, _, leaf in rows for n in leaf.get("notes") or []))
            if notes:
                table.caption = "; ".join(notes)
        else:
            for col in ["mode", "method", "loss", "tokens", "seconds"]:
                table.add_column(col, justify="left" if col in ("mode", "method") else "right")
            for m, me, leaf in rows:
                table.add_row(m, me, f"{leaf['loss']:.4f}", str(leaf["tokens"]), f"{leaf['seconds']:.1f}")
        console.print(table)
    console.print(f"results: {Path(out) / 'results.json'}, {Path(out) / 'results.md'}, {Path(out) / 'samples.jsonl'}",
                  soft_wrap=True)
