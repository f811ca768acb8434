"""`fvlm caption MEDIA...`: caption or answer a question about videos and images."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fvlm_cli.commands._common import check_media_args, DeviceOpt, DtypeOpt, JsonOpt, ModelOpt


def caption(
    media: List[Path] = typer.Argument(..., help="Video or image files (any container PyAV reads; png/jpg/webp/...)."),
    model: str = ModelOpt,
    mode: str = typer.Option("autoregressive", "--mode", help="coarse_only | coarse_fine | autoregressive"),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Question or instruction (default: the model's caption prompt)."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Generation length cap."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (with --temperature > 0)."),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty", help="> 1 discourages repeats."),
    order: Optional[str] = typer.Option(None, "--order", help="video_first | question_first (default: the model's)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Inputs decoded and generated together."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Caption or answer questions about videos and images (one line per input)."""
    import json

    from fvlm_cli.errors import FvlmError
    from fvlm_cli.settings import MODES

    if mode not in MODES:
        raise FvlmError(f"--mode {mode!r}: use one of {', '.join(MODES)}")
    check_media_args(media, order)

    from fvlm_cli.model.build import load_model
    from fvlm_cli.model.generate import generate

    lm = load_model(model, device=device, dtype=dtype)
    for start in range(0, len(media), batch_size):
        chunk = [str(m) for m in media[start : start + batch_size]]
        outs = generate(lm, chunk, prompt, mode=mode, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_p=top_p, repetition_penalty=repetition_penalty, order=order, seed=seed)
        for path, g in zip(chunk, outs):
            if json_out:
                typer.echo(json.dumps({"input": path, "mode": mode, "text": g.text, "frames": g.frames,
                                       "seconds": round(g.seconds, 3), "first_token_s": round(g.first_token_s, 3)}))
            else:
                typer.echo(f"{path}\t{g.text}")
