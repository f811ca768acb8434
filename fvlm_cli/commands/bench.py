"""`fvlm bench NAME...`: benchmarks in the three modes (results.json, samples.jsonl, results.md; resumable)."""

from __future__ import annotations

from typing import List, Optional

import typer

from fvlm_cli.commands._common import ConfigOpt, JsonOpt, PrintConfigOpt, SetOpt, flag
from fvlm_cli.eval.settings import BENCHMARKS, BenchConfig

# flag -> BenchConfig key: the defaults live once, in fvlm_cli/eval/settings.py
BENCH_FLAGS = {"model": "model", "protocol": "protocol", "mode": "mode", "method": "method", "limit": "limit",
               "out": "out", "order": "order", "batch_size": "batch_size", "max_new_tokens": "max_new_tokens",
               "meteor": "meteor", "answer_format": "answer_format", "device": "device", "dtype": "dtype"}


def bench(
    ctx: typer.Context,
    names: Optional[List[str]] = typer.Argument(None, help=f"Benchmarks: {' | '.join(BENCHMARKS)}.", show_default=False),
    model: Optional[str] = flag(BenchConfig, "model", "--model", "-m"),
    protocol: Optional[str] = flag(BenchConfig, "protocol", "--protocol"),
    mode: Optional[str] = flag(BenchConfig, "mode", "--mode"),
    method: Optional[str] = flag(BenchConfig, "method", "--method"),
    limit: Optional[int] = flag(BenchConfig, "limit", "--limit"),
    out: Optional[str] = flag(BenchConfig, "out", "--out", "-o"),
    order: Optional[str] = flag(BenchConfig, "order", "--order"),
    data: Optional[List[str]] = typer.Option(None, "--data", help="Shards of a benchmark: NAME=DIR (repeatable); a bare DIR with one benchmark (default: data/NAME)."),
    batch_size: Optional[int] = flag(BenchConfig, "batch_size", "--batch-size"),
    max_new_tokens: Optional[int] = flag(BenchConfig, "max_new_tokens", "--max-new-tokens"),
    meteor: Optional[bool] = flag(BenchConfig, "meteor", "--meteor/--no-meteor"),
    answer_format: Optional[str] = flag(BenchConfig, "answer_format", "--answer-format"),
    device: Optional[str] = flag(BenchConfig, "device", "--device"),
    dtype: Optional[str] = flag(BenchConfig, "dtype", "--dtype"),
    gpus: int = typer.Option(0, "--gpus", help="Shard the questions over N processes with torchrun (one per GPU); results merged."),
    config_file: Optional[str] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
    print_config: bool = PrintConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Benchmark a model in its three modes: MCQ under a scoring protocol, captioning, val-loss."""
    import json

    from fvlm_cli import config as cfglib
    from fvlm_cli.commands._common import flag_values
    from fvlm_cli.errors import FvlmError
    from fvlm_cli.eval.bench import resolve_names

    data_cfg = cfglib.apply_overrides(cfglib.read_yaml(config_file) if config_file else {}, sets, BenchConfig)
    for key, value in flag_values(ctx, BENCH_FLAGS).items():
        cfglib.assign(data_cfg, key, value)
    if names:
        data_cfg["benchmarks"] = list(names)
    cfg = cfglib.from_dict(BenchConfig, data_cfg)
    cfg.benchmarks = resolve_names(cfg.benchmarks, cfg.protocol)
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
    if gpus and gpus > 1:
        from fvlm_cli.commands.train import _launch_torchrun

        _launch_torchrun(gpus)
    from fvlm_cli.eval.bench import run_config

    results = run_config(cfg, progress=True)
    if not results:  # a rank other than 0 under torchrun: rank 0 reports
        return
    if json_out:
        typer.echo(json.dumps(results))
        return
    _render(results, cfg.out)


def _render(results: dict, out: str) -> None:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    console = Console()
    for bench, res in results["benchmarks"].items():
        title = f"{bench}  ({res.get('questions', '?')} samples" + (f", protocol {res['protocol']})" if res.get("protocol") else ")")
        table = Table(title=title, title_justify="left")
        rows = [(m, me, leaf) for m, v in res.items() if isinstance(v, dict) for me, leaf in v.items()
                if isinstance(leaf, dict)]
        if not rows:
            continue
        first = rows[0][2]
        if "accuracy" in first:
            extra = [k for k in ("f1", "yes_ratio", "lmms_eval_score") if k in first]
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
