"""`fvlm serve`: an OpenAI-compatible HTTP API for a model, and a demo page at `/` (needs the `serve` extra)."""

from __future__ import annotations

from typing import Optional

import typer

from fvlm_cli.commands._common import DeviceOpt, DtypeOpt, ModelOpt, flag
from fvlm_cli.infer.settings import ServeConfig

SERVE_FLAGS = {"host": "host", "port": "port", "allow_local_files": "allow_local_files", "max_body_mb": "max_body_mb",
               "max_media_mb": "max_media_mb", "max_tokens": "max_tokens", "batch_size": "batch_size",
               "batch_wait_ms": "batch_wait_ms", "cors_origin": "cors_origins"}


def serve(
    ctx: typer.Context,
    model: str = ModelOpt,
    host: Optional[str] = flag(ServeConfig, "host", "--host"),
    port: Optional[int] = flag(ServeConfig, "port", "--port"),
    allow_local_files: Optional[bool] = flag(ServeConfig, "allow_local_files", "--allow-local-files/--no-local-files"),
    max_body_mb: Optional[float] = flag(ServeConfig, "max_body_mb", "--max-body-mb"),
    max_media_mb: Optional[float] = flag(ServeConfig, "max_media_mb", "--max-media-mb"),
    max_tokens: Optional[int] = flag(ServeConfig, "max_tokens", "--max-tokens"),
    batch_size: Optional[int] = flag(ServeConfig, "batch_size", "--batch-size"),
    batch_wait_ms: Optional[float] = flag(ServeConfig, "batch_wait_ms", "--batch-wait-ms"),
    cors_origin: Optional[list[str]] = flag(ServeConfig, "cors_origins", "--cors-origin",
                                            help="a browser origin allowed to call the API (repeatable; '*' = any)",
                                            metavar="ORIGIN"),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
) -> None:
    """Serve a model over HTTP: POST /v1/chat/completions (OpenAI-compatible, image_url/video_url parts, `mode`
    extra field, stream), GET /v1/models, GET /health, and a demo page at / comparing the three modes."""
    from fvlm_cli import config as cfglib
    from fvlm_cli.commands._common import flag_values
    from fvlm_cli.errors import FvlmError

    data: dict = {}
    for key, value in flag_values(ctx, SERVE_FLAGS).items():
        cfglib.assign(data, key, value)
    cfg = cfglib.from_dict(ServeConfig, data)
    if not 0 <= cfg.port < 65536:
        raise FvlmError(f"--port {cfg.port}: use 0-65535")
    try:
        import uvicorn

        from fvlm_cli.serve.app import create_app
    except ImportError as e:
        raise FvlmError(f"fvlm serve needs the serve extra ({e.name} is missing): pip install 'fvlm[serve]'") from None
    from fvlm_cli.model.build import load_model

    lm = load_model(model, device=device, dtype=dtype)
    app = create_app(lm, cfg, model_id=model)
    shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    typer.echo(f"fvlm serve: {model} on http://{shown}:{cfg.port}  (demo page: /, API: /v1/chat/completions)", err=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", timeout_graceful_shutdown=5)
