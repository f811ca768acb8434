"""Local stand-ins for remote storage, on 127.0.0.1 (no network needed).

    with FileServer(root, faults={"shard-000001.tar": ["503"], "shard-000002.tar": ["cut"]}) as srv:
        url = f"{srv.url}/shard-{{000000..000003}}.tar"          # served from root; faults used once, in order
        srv.requests["shard-000001.tar"]                          # how often each file was asked for

    hub = LocalHub(tmp_path / "hub")                              # a Hub: resolve/ downloads + /api tree listing
    monkeypatch.setenv("HF_ENDPOINT", hub.url); monkeypatch.setattr(huggingface_hub, "HfApi", hub.api_class())

The Hub stand-in serves the read side over HTTP the way the Hub does (`/datasets/{repo}/resolve/{rev}/{path}`,
`/api/datasets/{repo}/tree/{rev}/{path}?recursive=...` with `oid`, `size` and `lfs.oid` = sha256), so the real
huggingface_hub client (list_repo_tree, list_repo_files) and curl read it. The write side (create_repo,
create_commit) is the real `HfApi` class with those two methods storing files in the stand-in's folder:
the commit protocol (preupload, LFS/Xet transfers) is the client's business, not the code under test's.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import parse_qs, unquote, urlparse


class _Server:
    """A threaded HTTP server whose GET/HEAD answers come from `self.route(path) -> (status, bytes, headers)`."""

    def __init__(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self, head: bool):
                server.headers.append(dict(self.headers))
                status, body, headers, fault = server.route(self.path)
                self.send_response(status)
                for k, v in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                if fault == "cut":
                    self.send_header("Connection", "close")
                self.end_headers()
                if head:
                    return
                if fault == "cut":  # half the body, then the connection goes away
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def do_GET(self):
                self._answer(False)

            def do_HEAD(self):
                self._answer(True)

        self.headers: list[dict] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def route(self, path: str):  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FileServer(_Server):
    """Serves the files under `root`; `faults` {name: ["503" | "cut" | "404-always" | "503-always", ...]}."""

    def __init__(self, root: str | Path, faults: Optional[dict[str, list[str]]] = None):
        self.root, self.faults = Path(root), {k: list(v) for k, v in (faults or {}).items()}
        self.requests: Counter = Counter()
        self._lock = threading.Lock()
        super().__init__()

    def route(self, path: str):
        name = unquote(urlparse(path).path).lstrip("/")
        with self._lock:
            self.requests[name] += 1
            queue = self.faults.get(name, [])
            fault = queue[0] if queue else None
            if fault and not fault.endswith("-always"):
                queue.pop(0)
        if fault in ("503", "503-always"):
            return 503, b"busy", {}, None
        file = self.root / name
        if fault == "404-always" or not file.is_file():
            return 404, b"not found", {}, None
        return 200, file.read_bytes(), {"Content-Type": "application/octet-stream"}, fault


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class LocalHub(_Server):
    """A Hub stand-in storing dataset repos under `root/datasets/OWNER/NAME/`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.commits: list[dict] = []
        self.fail_commit: Optional[Callable[[int], bool]] = None   # commit number -> raise?
        super().__init__()

    def repo(self, repo_id: str) -> Path:
        return self.root / "datasets" / repo_id

    def route(self, path: str):
        u = urlparse(path)
        parts = [unquote(p) for p in u.path.split("/") if p]
        if len(parts) >= 5 and parts[0] == "datasets" and parts[3] == "resolve":
            file = self.repo(f"{parts[1]}/{parts[2]}") / "/".join(parts[5:])
            if not file.is_file():
                return 404, b"Entry not found", {"X-Error-Code": "EntryNotFound"}, None
            return 200, file.read_bytes(), {"Content-Type": "application/octet-stream"}, None
        if len(parts) >= 6 and parts[:2] == ["api", "datasets"] and parts[4] == "tree":
            repo = self.repo(f"{parts[2]}/{parts[3]}")
            if not repo.is_dir():
                return 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, None
            sub = "/".join(unquote(p) for p in parts[6:])
            base = repo / sub if sub else repo
            if not base.exists():
                return 404, b'{"error": "Entry not found"}', {"X-Error-Code": "EntryNotFound"}, None
            recursive = parse_qs(u.query).get("recursive", ["False"])[0].lower() == "true"
            items = sorted(base.rglob("*") if recursive else base.iterdir())
            out = []
            for p in items:
                rel = p.relative_to(repo).as_posix()
                if p.is_dir():
                    out.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": rel})
                    continue
                data = p.read_bytes()
                entry = {"type": "file", "oid": _git_blob_id(data), "size": len(data), "path": rel}
                if p.suffix == ".tar":  # binary files are LFS on the Hub: their sha256 is lfs.oid
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 130}
                out.append(entry)
            return 200, json.dumps(out).encode(), {"Content-Type": "application/json"}, None
        return 404, b"not found", {}, None

    def api_class(self):
        """The real HfApi with create_repo / create_commit writing into this stand-in."""
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import CommitInfo, RepoUrl

        hub = self

        class StandInHfApi(HfApi):
            def create_repo(self, repo_id, *, token=None, private=None, repo_type=None, exist_ok=False, **kw):
                assert repo_type == "dataset", repo_type
                path = hub.repo(repo_id)
                if path.exists() and not exist_ok:
                    raise FileExistsError(repo_id)
                path.mkdir(parents=True, exist_ok=True)
                return RepoUrl(f"{hub.url}/datasets/{repo_id}", endpoint=hub.url)

            def create_commit(self, repo_id, operations, *, commit_message, repo_type=None, **kw):
                assert repo_type == "dataset", repo_type
                n = len(hub.commits)
                if hub.fail_commit is not None and hub.fail_commit(n):
                    raise ConnectionError(f"stand-in: commit {n} refused")
                for op in operations:
                    dest = hub.repo(repo_id) / op.path_in_repo
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(op.path_or_fileobj, dest)
                hub.commits.append({"message": commit_message, "files": [op.path_in_repo for op in operations]})
                oid = hashlib.sha1(json.dumps(hub.commits[-1]).encode()).hexdigest()
                return CommitInfo(commit_url=f"{hub.url}/datasets/{repo_id}/commit/{oid}", commit_message=commit_message,
                                  commit_description="", oid=oid, _endpoint=hub.url)

        return StandInHfApi
