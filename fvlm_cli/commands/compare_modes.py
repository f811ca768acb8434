"""`fvlm compare-modes MEDIA...`: the three modes side by side (text, latency, loss, attention + heatmap PNGs)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fvlm_cli.commands._common import DeviceOpt, DtypeOpt, JsonOpt, ModelOpt

EPILOG = ("Exit status: 0 when every input was compared; 2 when any input could not be read (each is one line on "
          "stderr and a {\"input\", \"error\"} JSON line with --json; the other inputs are still compared and "
          "written) or on a usage error; 1 on an internal error.")


def compare_modes(
    media: List[str] = typer.Argument(..., help="Video or image files."),
    model: str = ModelOpt,
    reference: Optional[str] = typer.Option(None, "--reference", "-r", help="Reference answer: its loss (mean NLL per token) under each mode."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Question or instruction (default: the model's caption prompt)."),
    out: Path = typer.Option(Path("runs/compare"), "--out", "-o", help="Where compare.json and the attention PNGs go."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Generation length cap."),
    mode: str = typer.Option("all", "--mode", help="Modes to compare: all, or a comma list of coarse_only, coarse_fine, autoregressive."),
    order: Optional[str] = typer.Option(None, "--order", help="video_first | question_first (default: the model's)."),
    max_frames_shown: int = typer.Option(16, "--max-frames-shown", help="Heatmap columns (frames spread uniformly)."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Compare coarse_only, coarse_fine and autoregressive on the same inputs."""
    import json

    from fvlm_cli.eval.bench import parse_modes

    from fvlm_cli.errors import FvlmError

    modes = parse_modes(mode)
    if order not in (None, "video_first", "question_first"):
        raise FvlmError(f"--order {order!r}: use video_first or question_first")

    from rich.console import Console
    from rich.markup import escape

    from fvlm_cli.eval.compare import compare_modes as run
    from fvlm_cli.model.build import load_model

    errc = Console(stderr=True, highlight=False, soft_wrap=True)

    def on_error(rec: dict) -> None:
        errc.print(f"[bold red]error:[/] {escape(rec['input'])}: {escape(rec['error'])}")
        if json_out:
            typer.echo(json.dumps(rec))

    lm = load_model(model, device=device, dtype=dtype)
    report = run(lm, list(media), prompt=prompt, reference=reference, out_dir=out, max_new_tokens=max_new_tokens,
                 order=order, modes=modes, max_heatmap_frames=max_frames_shown, on_error=on_error)
    if json_out:
        typer.echo(json.dumps(report))
    elif report["inputs"]:
        _render(report, out)
    if report["errors"]:
        from fvlm_cli.commands.caption import raise_failed

        raise_failed(len(report["errors"]))


def _render(report: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    has_loss = report.get("reference") is not None
    table = Table(title=f"compare-modes: {report['model']}  prompt: {report['prompt']!r}", title_justify="left")
    for col in ["input", "mode", "text", "seconds", "1st token s", *(["loss"] if has_loss else []), "attn entropy"]:
        table.add_column(col, justify="right" if col in ("seconds", "1st token s", "loss", "attn entropy") else "left",
                         overflow="fold", no_wrap=col == "mode", ratio=3 if col == "text" else None)
    for entry in report["inputs"]:
        for i, (mode, r) in enumerate(entry["modes"].items()):
            ent = "—" if r.get("attn_entropy") is None else f"{r['attn_entropy']:.3f}"
            table.add_row(Path(entry["input"]).name if i == 0 else "", mode, r["text"] or "[dim](empty)[/]",
                          f"{r['seconds']:.3f}", f"{r['first_token_s']:.3f}",
                          *([f"{r['loss']:.4f}"] if has_loss else []), ent)
    console.print(table)
    pngs = [p for e in report["inputs"] for p in (e.get("heatmaps") or {}).values()]
    console.print(f"wrote {out / 'compare.json'} and {len(pngs)} heatmap PNG(s) in {out}", soft_wrap=True)
