"""`fvlm serve`: the OpenAI-compatible API with the real `openai` client, streaming, batching, every 4xx."""

import json
import os
import subprocess
import sys
import threading

import httpx
import pytest
import torch

from media_factory import write_image, write_video
from serve_helpers import ROOT, Server, data_uri, media_message

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    return {"clip": write_video(d / "clip.mp4", seconds=3, fps=8, size=(64, 48)),
            "photo": write_image(d / "photo.png", (40, 30))}


@pytest.fixture(scope="module")
def server():
    s = Server("--batch-size", "4", "--batch-wait-ms", "400", "--max-body-mb", "1", "--max-media-mb", "0.5",
               "--max-tokens", "32")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference():
    """The same tiny model in this process: what the server must answer."""
    from fvlm_cli import generate, load_model

    torch.set_num_threads(1)
    lm = load_model("tiny", device="cpu")
    return lambda path, **kw: generate(lm, [str(path)], "What moves?", **kw)[0]


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["model"] == "tiny"


def test_openai_client_answers_what_the_model_generates(client, media, reference):
    resp = client.chat.completions.create(model="tiny", messages=media_message(data_uri(media["clip"], "video/mp4")),
                                          max_tokens=6, temperature=1.0, seed=3, extra_body={"mode": "coarse_fine"})
    want = reference(media["clip"], mode="coarse_fine", max_new_tokens=6, temperature=1.0, seed=3)
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == want.text and want.text
    assert resp.usage.completion_tokens == len(want.token_ids)
    assert choice.finish_reason == ("stop" if len(want.token_ids) < 6 else "length")
    assert resp.model_extra["fvlm"]["mode"] == "coarse_fine" and resp.model_extra["fvlm"]["frames"] == 3


def test_openai_client_streaming(client, media):
    kw = dict(model="tiny", messages=media_message(data_uri(media["clip"], "video/mp4")), max_tokens=8,
              temperature=1.0, seed=5, extra_body={"mode": "autoregressive"})
    full = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, **kw))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert full and "".join(pieces) == full and len(pieces) >= 2  # token by token, not one blob
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_image_by_http_url_and_a_conversation(server, media, http_server):
    http_server.files["/photo.png"] = media["photo"].read_bytes()
    msgs = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}] + media_message(http_server.url + "/photo.png", kind="image_url")
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": msgs, "max_tokens": 3, "mode": "coarse_only"},
                   timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["fvlm"]["frames"] == 8  # an image is replicated to 8 frames
    assert http_server.hits["/photo.png"] == 1


def test_concurrent_requests_are_batched_and_the_model_never_runs_twice_at_once(server, media):
    before = httpx.get(server.url + "/health").json()
    uri = data_uri(media["clip"], "video/mp4")
    modes = ["coarse_only", "coarse_only", "coarse_only", "autoregressive", "coarse_only", "autoregressive"]
    results = [None] * len(modes)

    def one(i):
        results[i] = httpx.post(server.url + "/v1/chat/completions", timeout=180,
                                json={"messages": media_message(uri), "max_tokens": 4, "mode": modes[i]})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(modes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    assert [r.json()["fvlm"]["mode"] for r in results] == modes
    texts = {r.json()["choices"][0]["message"]["content"] for r, m in zip(results, modes) if m == "coarse_only"}
    assert len(texts) == 1  # greedy and batch-invariant: the same answer whatever the batch
    h = httpx.get(server.url + "/health").json()
    assert h["requests"] - before["requests"] == 6
    assert h["batches"] - before["batches"] < 6 and h["largest_batch"] >= 2  # compatible requests shared a batch
    assert h["most_running_at_once"] == 1


def _post(server, body, raw=None):
    if raw is not None:
        return httpx.post(server.url + "/v1/chat/completions", content=raw, timeout=60,
                          headers={"Content-Type": "application/json"})
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)


def test_every_bad_request_is_a_4xx_json_error_and_the_server_stays_up(server, media, tmp_path, http_server):
    clip = data_uri(media["clip"], "video/mp4")
    http_server.files["/big.mp4"] = b"\0" * (600 * 1024)
    cases = [
        ("bad json", None, b"{not json", 400, "bad_json"),
        ("not an object", [1, 2], None, 400, None),
        ("no messages", {"messages": []}, None, 400, None),
        ("no media", {"messages": [{"role": "user", "content": "hi"}]}, None, 400, "media_required"),
        ("two media", {"messages": [{"role": "user", "content": media_message(clip)[0]["content"] * 2}]}, None, 400, None),
        ("unreadable media", {"messages": media_message("data:video/mp4;base64," + "QUJD" * 50)}, None, 400,
         "unreadable_media"),
        ("bad base64", {"messages": media_message("data:video/mp4;base64,@@@")}, None, 400, "bad_data_uri"),
        ("unknown mode", {"messages": media_message(clip), "mode": "sideways"}, None, 400, None),
        ("max_tokens over the cap", {"messages": media_message(clip), "max_tokens": 33}, None, 400, "max_tokens_exceeded"),
        ("bad temperature", {"messages": media_message(clip), "temperature": "hot"}, None, 400, None),
        ("local file refused", {"messages": media_message(str(media["clip"]))}, None, 400, "local_files_disabled"),
        ("unknown part", {"messages": [{"role": "user", "content": [{"type": "audio_url"}]}]}, None, 400, None),
        ("infinite max_tokens", None, b'{"messages": [], "max_tokens": 1e400}', 400, None),
        ("logprobs", {"messages": media_message(clip), "logprobs": True}, None, 400, None),
        ("tools", {"messages": media_message(clip), "tools": [{"type": "function", "function": {"name": "f"}}]},
         None, 400, None),
        ("json mode", {"messages": media_message(clip), "response_format": {"type": "json_object"}}, None, 400, None),
        ("five stops", {"messages": media_message(clip), "stop": ["a", "b", "c", "d", "e"]}, None, 400, None),
        ("stream_options without stream", {"messages": media_message(clip), "stream_options": {"include_usage": True}},
         None, 400, None),
        ("body too large", None, json.dumps({"messages": media_message("data:video/mp4;base64," + "A" * (1 << 20))}).encode(),
         413, "body_too_large"),
        ("media too large", {"messages": media_message(http_server.url + "/big.mp4")}, None, 413, None),
        ("media url 404", {"messages": media_message(http_server.url + "/missing.mp4")}, None, 400, "media_fetch_failed"),
    ]
    for name, body, raw, status, code in cases:
        r = _post(server, body, raw)
        assert r.status_code == status, (name, r.text)
        err = r.json()["error"]
        assert isinstance(err["message"], str) and err["message"], name
        if code:
            assert err["code"] == code, (name, err)
    assert httpx.get(server.url + "/v1/nope").status_code == 404
    ok = _post(server, {"messages": media_message(clip), "max_tokens": 2})
    assert ok.status_code == 200  # still serving


def test_stop_strings_end_the_completion_streamed_or_not(client, media, reference):
    """`stop` cuts the text before the first stop string with finish_reason stop, in one piece or streamed (the
    deltas never show any part of the stop string)."""
    want = reference(media["clip"], mode="coarse_fine", max_new_tokens=12, temperature=1.0, seed=3)
    text = want.text
    k = next(k for k in range(len(text) // 2, len(text) - 1) if text.find(text[k:k + 2]) == k)
    stop = text[k:k + 2]  # its first occurrence is at k: the completion is text[:k]
    kw = dict(model="tiny", messages=media_message(data_uri(media["clip"], "video/mp4")), max_tokens=12,
              temperature=1.0, seed=3, stop=[stop, "never-seen"], extra_body={"mode": "coarse_fine"})
    resp = client.chat.completions.create(**kw)
    assert resp.choices[0].message.content == text[:k] and resp.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(stream=True, **kw))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == text[:k] and chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)  # no include_usage: no usage anywhere


def test_stream_usage_only_when_asked_in_its_own_last_chunk(client, media):
    kw = dict(model="tiny", messages=media_message(data_uri(media["clip"], "video/mp4")), max_tokens=5, stream=True)
    chunks = list(client.chat.completions.create(stream_options={"include_usage": True}, **kw))
    *body, last = chunks
    assert last.choices == [] and last.usage.completion_tokens >= 1
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in body) and body[-1].choices[0].finish_reason in ("stop", "length")


def test_responses_style_parts_and_text_parts_joined_by_newlines():
    from fvlm_cli.serve.protocol import parse_chat

    body = {"messages": [{"role": "user", "content": [
        {"type": "input_text", "text": "Describe"}, {"type": "input_image", "image_url": "data:image/png;base64,AA"},
        {"type": "text", "text": "Be brief."}]}], "n": None, "mode": None}
    req = parse_chat(body, max_tokens_limit=32, default_max_tokens=16)
    assert req.media_url == "data:image/png;base64,AA" and req.media_kind == "image"
    assert req.messages[-1]["content"] == "Describe\nBe brief." and req.mode == "autoregressive"


def test_an_unexpected_error_is_a_json_500(monkeypatch):
    """Not Starlette's plain-text 500: clients parse OpenAI's error body."""
    from fastapi.testclient import TestClient

    from fvlm_cli.serve import app as serve_app
    from fvlm_cli.infer.settings import ServeConfig
    from fvlm_cli.serve import protocol

    def broken(*a, **kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(protocol, "parse_chat", broken)
    app = serve_app.create_app(_LM(), ServeConfig(), "tiny")
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/chat/completions", json={"messages": []})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error" and "boom" in r.json()["error"]["message"]


class _LM:
    """Just enough of a loaded model for create_app (the request fails before the model runs)."""

    class tokenizer:
        eos_token_id, pad_token_id = 2, 2

        @staticmethod
        def convert_tokens_to_ids(t):
            return 2


def test_seeded_sampling_does_not_depend_on_batch_neighbours():
    """One generator per row: a seeded request draws the same tokens alone and batched with another."""
    from fvlm_cli import load_model
    from fvlm_cli.infer.core import generate_clips

    lm = load_model("tiny", device="cpu")
    torch.manual_seed(0)
    a, b = torch.rand(3, 3, 64, 64), torch.rand(5, 3, 64, 64)
    kw = dict(mode="autoregressive", max_new_tokens=6, temperature=1.0, seed=11)
    alone = generate_clips(lm, [a], ["What moves?"], **kw)[0].token_ids
    together = generate_clips(lm, [b, a], ["Describe it.", "What moves?"], **kw)[1].token_ids
    assert alone == together


def test_a_cancelled_row_stops_while_its_batch_goes_on():
    """A streaming client that goes away (or whose stop string was seen) sets `cancel`: the engine ends that row
    at the next step and the rest of the batch is unaffected."""
    import asyncio

    from fvlm_cli import load_model
    from fvlm_cli.infer.core import generate_clips
    from fvlm_cli.serve.engine import Engine, GenJob

    lm = load_model("tiny", device="cpu")
    loop = asyncio.new_event_loop()
    clip = torch.rand(3, 3, 64, 64)
    key = ("coarse_fine", 10, 0.0, 1.0, None, None)
    hi = [{"role": "user", "content": "Hi"}]

    class LeavesOnceStarted(threading.Event):  # the client goes away after the batch has started
        calls = 0

        def is_set(self):
            self.calls += 1
            return self.calls > 1

    gone, stays = GenJob(clip, hi, key, loop, cancel=LeavesOnceStarted()), GenJob(clip, hi, key, loop)
    left_before = GenJob(clip, hi, key, loop)
    left_before.cancel.set()  # gone while it waited in the queue: never generated
    engine = Engine(lm)
    engine._generate([left_before, gone, stays])
    loop.run_until_complete(asyncio.sleep(0))  # the futures are resolved through the loop
    alone = generate_clips(lm, [clip], [hi], mode="coarse_fine", max_new_tokens=10)
    assert len(gone.future.result().token_ids) == 1
    assert stays.future.result().token_ids == alone[0].token_ids
    assert left_before.future.cancelled()
    assert engine.stats.cancelled == 2 and engine.stats.requests == 2
    loop.close()


def test_openai_client_sees_4xx_as_bad_request(client):
    with pytest.raises(openai.BadRequestError, match="no image or video"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])


def test_local_files_when_allowed(media):
    s = Server("--allow-local-files")
    try:
        r = httpx.post(s.url + "/v1/chat/completions", timeout=120,
                       json={"messages": media_message("file://" + str(media["photo"]), kind="image_url"), "max_tokens": 2})
        assert r.status_code == 200 and r.json()["fvlm"]["frames"] == 8
        r = httpx.post(s.url + "/v1/chat/completions", timeout=60,
                       json={"messages": media_message(str(media["photo"]) + ".gone"), "max_tokens": 2})
        assert r.status_code == 400 and r.json()["error"]["code"] == "media_not_found"
    finally:
        s.stop()


def test_serve_without_the_extra_is_a_user_error(tmp_path):
    fake = tmp_path / "fastapi"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'fastapi'\", name='fastapi')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([sys.executable, "-m", "fvlm_cli", "serve", "--model", "tiny"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "pip install 'fvlm[serve]'" in r.stderr and "Traceback" not in r.stderr


def test_only_serve_imports_the_server_stack():
    code = ("import sys, fvlm_cli.cli, fvlm_cli.infer.captioner, fvlm_cli.eval.compare; "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


def test_a_full_queue_is_503_not_a_hang():
    from fvlm_cli.serve.engine import Engine
    from fvlm_cli.serve.protocol import ApiError

    engine = Engine(lm=None, max_queue=2)  # not started: nothing is taken off the queue
    engine.submit("job 1")
    engine.submit("job 2")
    with pytest.raises(ApiError) as e:
        engine.submit("job 3")
    assert e.value.status == 503 and e.value.body()["error"]["code"] == "queue_full"


def test_cors_only_for_the_origins_given():
    """--cors-origin lets a page on another origin call the API (preflight answered); without it, no CORS headers."""
    from fastapi.testclient import TestClient

    from fvlm_cli.infer.settings import ServeConfig
    from fvlm_cli.serve import app as serve_app

    pre = {"Origin": "http://ui.example:3000", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "content-type"}
    with TestClient(serve_app.create_app(_LM(), ServeConfig(cors_origins=["http://ui.example:3000"]), "tiny")) as c:
        r = c.options("/v1/chat/completions", headers=pre)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://ui.example:3000"
        assert "access-control-allow-origin" not in c.get("/v1/models", headers={"Origin": "http://evil.example"}).headers
    with TestClient(serve_app.create_app(_LM(), ServeConfig(), "tiny")) as c:
        assert "access-control-allow-origin" not in c.get("/v1/models", headers={"Origin": "http://ui.example:3000"}).headers


def test_a_non_streaming_client_that_leaves_is_not_generated_for(server, media):
    """The server notices the disconnect while the request waits for its batch (--batch-wait-ms 400) and drops
    it; the next request is answered as usual."""
    import time

    before = httpx.get(server.url + "/health").json()
    body = {"messages": media_message(data_uri(media["photo"], "image/png"), kind="image_url"), "max_tokens": 32}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(30, read=0.15))
    deadline = time.time() + 30
    while (now := httpx.get(server.url + "/health").json())["cancelled"] == before["cancelled"] and time.time() < deadline:
        time.sleep(0.1)
    assert now["cancelled"] == before["cancelled"] + 1
    r = httpx.post(server.url + "/v1/chat/completions", json={**body, "max_tokens": 2}, timeout=120)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
    assert httpx.get(server.url + "/health").json()["cancelled"] == now["cancelled"]
