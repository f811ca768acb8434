"""Shared test fixtures: the tests folder on sys.path (media_factory, ...) and a local HTTP server."""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def one_thread():
    """The tiny model is latency-bound: one torch thread is fastest, and far steadier on a shared CI box.
    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lm():
    """The tiny preset (random weights, seed 0) on CPU, loaded once per module."""
    import torch

    from fvlm_cli.model.build import load_model

    torch.manual_seed(0)
    return load_model("tiny", device="cpu")


class LocalServer:
    """http://127.0.0.1:<ephemeral port>: serves `files`, optionally after `delay` seconds, failing with the
    statuses queued in `fail` first, without a Content-Length header for paths in `no_length`, or a KiB at a time
    for paths in `trickle`."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.delay: dict[str, float] = {}
        self.fail: dict[str, list[int]] = {}
        self.no_length: set[str] = set()
        self.trickle: dict[str, float] = {}  # path -> seconds between 1 KiB pieces of the body
        self.hits: Counter = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                server.hits[self.path] += 1
                time.sleep(server.delay.get(self.path, 0.0))
                if server.fail.get(self.path):
                    self.send_error(server.fail[self.path].pop(0))
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if self.path not in server.no_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if self.path in server.trickle:
                        for i in range(0, len(body), 1024):
                            self.wfile.write(body[i:i + 1024])
                            self.wfile.flush()
                            time.sleep(server.trickle[self.path])
                    else:
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (size cap, deadline): fine
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_server():
    server = LocalServer()
    yield server
    server.close()
