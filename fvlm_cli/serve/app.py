"""The FastAPI app of `fvlm serve` (see fvlm_cli/serve/__init__.py for the parts)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fvlm_cli.serve import protocol
from fvlm_cli.serve.engine import CallJob, Engine, GenJob
from fvlm_cli.serve.fetch import media_bytes
from fvlm_cli.serve.protocol import ApiError

STATIC = Path(__file__).resolve().parent / "static"


async def read_json(request: Request, max_bytes: int):
    """The body as JSON; 413 past `max_bytes` (by Content-Length, or counted while reading), 400 if not JSON."""
    length = request.headers.get("content-length")
    too_big = ApiError(413, f"request body is over the {max_bytes / 2**20:.0f} MB limit (fvlm serve --max-body-mb)",
                       code="body_too_large")
    if length and length.isdigit() and int(length) > max_bytes:
        raise too_big
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > max_bytes:
            raise too_big
    try:
        return json.loads(body)
    except ValueError as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})", code="bad_json") from None


def create_app(lm, cfg, model_id: str) -> FastAPI:
    """`lm`: a loaded model (fvlm_cli.model.build.load_model); `cfg`: ServeConfig."""
    from fvlm_cli.errors import FvlmError
    from fvlm_cli.infer.core import load_clip, stop_ids

    engine = Engine(lm, batch_size=cfg.batch_size, batch_wait_s=cfg.batch_wait_ms / 1000, max_queue=cfg.max_queue)
    max_body = int(cfg.max_body_mb * 2**20)
    max_media = int(cfg.max_media_mb * 2**20)
    stops = set(stop_ids(lm.tokenizer))

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="fvlm", version=_version(), lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.engine = engine
    if cfg.cors_origins:  # browser pages on other origins (a web UI on another port); off by default
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"])

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e):
        return JSONResponse(ApiError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def server_error(request, e: Exception):  # OpenAI's error body for the unexpected too, not plain text
        return JSONResponse({"error": {"message": f"internal error: {type(e).__name__}: {e}", "type": "server_error",
                                       "param": None, "code": None}}, status_code=500)

    async def clip_of(url: str):
        data = await asyncio.to_thread(media_bytes, url, allow_local=cfg.allow_local_files, max_bytes=max_media,
                                       timeout=cfg.fetch_timeout)
        try:
            return await asyncio.to_thread(load_clip, data, lm.media, lm.model.image_size)
        except FvlmError as e:
            msg = str(e).removeprefix("<bytes>: ")
            raise ApiError(400, f"unreadable media: {msg}", "messages", "unreadable_media") from None

    @app.get("/health")
    async def health():
        s = engine.stats
        return {"status": "ok", "model": model_id, "queued": engine.pending(), "requests": s.requests,
                "batches": s.batches, "largest_batch": s.largest_batch, "cancelled": s.cancelled,
                "most_running_at_once": s.most_running,
                "busy_s": round(s.busy_s, 3), "uptime_s": round(time.time() - s.started, 1)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": int(engine.stats.started),
                                            "owned_by": "fvlm", "modes": list(protocol.MODES)}]}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = protocol.parse_chat(await read_json(request, max_body), max_tokens_limit=cfg.max_tokens,
                                  default_max_tokens=cfg.default_max_tokens)
        clip = await clip_of(req.media_url)
        loop = asyncio.get_running_loop()
        job = GenJob(clip, req.messages, (req.mode, req.max_tokens, req.temperature, req.top_p, req.order, req.seed),
                     loop, stream=req.stream, stop=req.stop)
        engine.submit(job)
        cid, name = protocol.completion_id(), req.model or model_id
        if not req.stream:
            gen = await _unless_gone(request, job)
            return Response(status_code=499) if gen is None else protocol.completion(cid, name, gen, req)
        return StreamingResponse(_sse(job, cid, name, req), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _unless_gone(request: Request, job: GenJob):
        """The job's generation, or None when the client disconnects first: the engine then drops the job, or ends
        its row at the next step (a streaming response notices the same through its generator's `finally`)."""
        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":  # the body is read: next is the disconnect
                pass

        watch = asyncio.ensure_future(disconnected())
        watch.add_done_callback(lambda t: t.cancelled() or t.exception())  # a failed watch is not worth a warning
        try:
            await asyncio.wait({job.future, watch}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server cancelled the handler: nobody waits for the answer either
            job.cancel.set()
            raise
        finally:
            watch.cancel()
        if job.future.done() and not job.future.cancelled():
            return job.future.result()
        job.cancel.set()
        return None

    async def _sse(job: GenJob, cid: str, name: str, req):
        created = int(time.time())
        usage_field = {"usage": None} if req.include_usage else None  # OpenAI: null on every chunk but the last

        def event(body) -> str:
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        def piece(text: str) -> str:
            return event(protocol.chunk(cid, name, created, {"content": text}, extra=usage_field))

        try:
            yield event(protocol.chunk(cid, name, created, {"role": "assistant", "content": ""}, extra=usage_field))
            ids, sent, stopped = [], "", False
            while not stopped and (tok := await job.tokens.get()) is not None:
                if tok in stops:
                    continue
                ids.append(tok)
                text = lm.tokenizer.decode(ids, skip_special_tokens=True).strip()
                if text.endswith("\ufffd") or not text.startswith(sent):
                    continue  # half a UTF-8 character
                text, stopped = protocol.cut_at_stop(text, req.stop)  # the engine ends that row itself
                if not stopped:  # what could still turn out to begin a stop string waits for the next token
                    text = text[: len(text) - protocol.stop_holdback(text, req.stop)]
                if len(text) > len(sent):
                    yield piece(text[len(sent):])
                    sent = text
            try:
                gen = await job.future
            except Exception as e:  # the headers are sent: report it in the stream
                yield event({"error": {"message": f"generation failed: {e}", "type": "server_error"}})
                return
            text, reason = protocol.finished(gen, req)
            if text.startswith(sent) and len(text) > len(sent):
                yield piece(text[len(sent):])
            stats = protocol.fvlm_stats(gen, req)
            yield event(protocol.chunk(cid, name, created, {}, reason, {**(usage_field or {}), "fvlm": stats}))
            if req.include_usage:
                yield event(protocol.chunk(cid, name, created, None, extra={"usage": protocol.usage(gen)}))
            yield "data: [DONE]\n\n"
        finally:  # the client went away (or the stream ended): stop generating for it
            job.cancel.set()

    @app.post("/v1/compare")
    async def compare(request: Request):
        """The demo page: one upload, the three modes side by side (text, latency, attention heatmaps)."""
        body = await read_json(request, max_body)
        if not isinstance(body, dict) or not isinstance(body.get("media"), str):
            raise ApiError(400, "'media' must be a data: URI or URL of one image or video", "media", "media_required")
        prompt = body.get("prompt") or None
        max_tokens = body.get("max_tokens", min(cfg.default_max_tokens, cfg.max_tokens))
        if not isinstance(max_tokens, int) or not 1 <= max_tokens <= cfg.max_tokens:
            raise ApiError(400, f"'max_tokens' must be an integer from 1 to {cfg.max_tokens}", "max_tokens")
        data = await asyncio.to_thread(media_bytes, body["media"], allow_local=cfg.allow_local_files,
                                       max_bytes=max_media, timeout=cfg.fetch_timeout)
        name = re.sub(r"[^\w.-]", "_", str(body.get("name") or "upload"))[:80] or "upload"
        job = CallJob(lambda: _compare(lm, data, name, prompt, max_tokens), asyncio.get_running_loop())
        engine.submit(job)
        report = await job.future
        if report["errors"]:
            raise ApiError(400, f"unreadable media: {report['errors'][0]['error']}", "media", "unreadable_media")
        return _compare_view(report)

    return app


def _compare(lm, data: bytes, name: str, prompt, max_tokens: int) -> dict:
    from fvlm_cli.eval.compare import compare_modes

    tmp = Path(tempfile.mkdtemp(prefix="fvlm-compare-"))
    try:
        path = tmp / name
        path.write_bytes(data)
        report = compare_modes(lm, [str(path)], prompt=prompt, out_dir=tmp / "out", max_new_tokens=max_tokens,
                               progress=False)
        for entry in report["inputs"]:
            entry["heatmaps"] = {k: "data:image/png;base64," + base64.b64encode(Path(v).read_bytes()).decode()
                                 for k, v in (entry.get("heatmaps") or {}).items()}
            entry["input"] = name
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _compare_view(report: dict) -> dict:
    (entry,) = report["inputs"]
    keep = ("text", "seconds", "first_token_s", "new_tokens", "attn_entropy", "attn_entropy_uniform")
    return {"input": entry["input"], "prompt": report["prompt"], "frames": entry["frames"],
            "decode_s": round(entry["decode_s"], 4),
            "modes": {m: {k: r.get(k) for k in keep} for m, r in entry["modes"].items()},
            "heatmaps": entry.get("heatmaps", {})}


def _version() -> str:
    from fvlm_cli import __version__

    return __version__
