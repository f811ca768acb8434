"""Local stand-ins for remote storage on 127.0.0.1: a Hub (`HubStandIn`) and a plain file server with faults
(`FileServer`).

`HubStandIn`: a local stand-in of the Hugging Face Hub API, serving folders as dataset repos.

It answers the calls `huggingface_hub.snapshot_download` / `hf_hub_download` make (repo info, the recursive
tree listing, HEAD/GET of `resolve/<rev>/<path>`), so tests run the real client: its `allow_patterns`
filtering decides what is fetched, and a pattern list that misses the archives leaves them out (the test
then fails on the missing videos). `fetched[repo]` lists the files actually downloaded. Tree entries of `.tar`
files carry `lfs.oid` = sha256, as the Hub gives binary files; `headers` records every request's headers.
`api_class()` is the real `HfApi` with `create_repo` / `create_commit` storing files in `root/<repo>` (served at
once): the commit transport (preupload, LFS/Xet) is the client's business, not the code under test's.

    hub = HubStandIn(root=tmp_path / "hub")
    monkeypatch.setenv("HF_ENDPOINT", hub.url); monkeypatch.setattr(huggingface_hub, "HfApi", hub.api_class())

`FileServer(root, faults={"shard-000001.tar": ["503"], "shard-000002.tar": ["cut"]})` serves the files under
`root`; each listed fault is used once, in order ("503", "cut" = half the body then the connection closes,
"503-always", "404-always", "403-always" = forbidden, as an object store answers for a missing key to a caller
who may not list the bucket); `requests[name]` counts what was asked for (the path, without a query string).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import threading
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import unquote, urlparse

SHA = "0123456789abcdef0123456789abcdef01234567"


class HubStandIn:
    def __init__(self, root: Optional[Path] = None):
        self.repos: dict[str, Path] = {}
        self.branches: dict[tuple[str, str], Path] = {}
        self.fetched: dict[str, list[str]] = defaultdict(list)
        self.headers: list[dict] = []
        self.root = Path(root) if root is not None else None   # where create_repo puts new repos
        self.commits: list[dict] = []
        self.fail_commit: Optional[Callable[[int], bool]] = None   # commit number -> refuse it?
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, obj, status=200):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _files(self, root: Path) -> list[str]:
                return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                              if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))

            def _route(self, head: bool):
                hub.headers.append(dict(self.headers))
                path = unquote(urlparse(self.path).path)
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "datasets"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
                    repo = "/".join(parts[2:4])
                    found = hub.folder(repo, parts[5])
                    if found is None:
                        return self._json({"error": "Repository not found"}, 404)
                    root, sha = found
                    files = self._files(root)
                    if parts[4] == "revision":
                        return self._json({"id": repo, "sha": sha, "siblings": [{"rfilename": f} for f in files]})
                    return self._json([_tree_entry(root, f) for f in files])
                if parts[0] == "datasets" and len(parts) >= 6 and parts[3] == "resolve":
                    repo, rel = "/".join(parts[1:3]), "/".join(parts[5:])
                    found = hub.folder(repo, parts[4])
                    root, sha = found or (Path("/nonexistent"), SHA)
                    file = root / rel
                    if found is None or not file.is_file():
                        self.send_response(404)
                        self.send_header("X-Error-Code", "EntryNotFound")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    body = file.read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("ETag", f'"{hashlib.sha1(body).hexdigest()}"')
                    self.send_header("X-Repo-Commit", sha)
                    self.end_headers()
                    if not head:
                        hub.fetched[repo].append(rel)
                        self.wfile.write(body)
                    return
                self._json({"error": f"not served: {path}"}, 404)

            def do_GET(self):
                self._route(head=False)

            def do_HEAD(self):
                self._route(head=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, repo_id: str, folder: Path, revision: str = "main") -> None:
        """Serve `folder` as `repo_id` at `revision` (a branch name; each branch gets its own commit sha)."""
        if revision == "main":
            self.repos[repo_id] = Path(folder)
        self.branches[(repo_id, revision)] = Path(folder)

    def folder(self, repo_id: str, revision: str):
        """(folder, commit sha) that `revision` (a branch name or its sha) of `repo_id` names, else None."""
        for (repo, branch), folder in self.branches.items():
            sha = SHA if branch == "main" else hashlib.sha1(branch.encode()).hexdigest()
            if repo == repo_id and revision in (branch, sha):
                return folder, sha
        return None

    def repo(self, repo_id: str) -> Path:
        return self.repos[repo_id]

    def api_class(self):
        """The real HfApi with create_repo / create_commit writing into this stand-in."""
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import CommitInfo, RepoUrl

        hub = self

        class StandInHfApi(HfApi):
            def create_repo(self, repo_id, *, token=None, private=None, repo_type=None, exist_ok=False, **kw):
                assert repo_type == "dataset", repo_type
                if repo_id in hub.repos and not exist_ok:
                    raise FileExistsError(repo_id)
                if repo_id not in hub.repos:
                    hub.add(repo_id, hub.root / repo_id)
                    hub.repos[repo_id].mkdir(parents=True, exist_ok=True)
                return RepoUrl(f"{hub.url}/datasets/{repo_id}", endpoint=hub.url)

            def create_commit(self, repo_id, operations, *, commit_message, repo_type=None, **kw):
                assert repo_type == "dataset", repo_type
                n = len(hub.commits)
                if hub.fail_commit is not None and hub.fail_commit(n):
                    raise ConnectionError(f"stand-in: commit {n} refused")
                for op in operations:
                    dest = hub.repos[repo_id] / op.path_in_repo
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(op.path_or_fileobj, dest)
                hub.commits.append({"message": commit_message, "files": [op.path_in_repo for op in operations]})
                oid = hashlib.sha1(json.dumps(hub.commits[-1]).encode()).hexdigest()
                return CommitInfo(commit_url=f"{hub.url}/datasets/{repo_id}/commit/{oid}",
                                  commit_message=commit_message, commit_description="", oid=oid, _endpoint=hub.url)

        return StandInHfApi

    def snapshot_download(self, **kwargs) -> str:
        """The real `huggingface_hub.snapshot_download`, pointed at this stand-in."""
        from huggingface_hub import snapshot_download

        return snapshot_download(endpoint=self.url, **kwargs)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _tree_entry(root: Path, f: str) -> dict:
    data = (root / f).read_bytes()
    entry = {"type": "file", "path": f, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
    if f.endswith(".tar"):  # binary files are LFS on the Hub: their sha256 is lfs.oid
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 130}
    return entry


class FileServer:
    """Serves the files under `root` over HTTP with injected faults (see the module docstring)."""

    def __init__(self, root: str | Path, faults: Optional[dict[str, list[str]]] = None):
        self.root, self.faults = Path(root), {k: list(v) for k, v in (faults or {}).items()}
        self.requests: Counter = Counter()
        lock, server = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self, head: bool):
                name = unquote(urlparse(self.path).path).lstrip("/")
                with lock:
                    server.requests[name] += 1
                    queue = server.faults.get(name, [])
                    fault = queue[0] if queue else None
                    if fault and not fault.endswith("-always"):
                        queue.pop(0)
                file = server.root / name
                status, body = 200, b""
                if fault in ("503", "503-always"):
                    status, body = 503, b"busy"
                elif fault == "403-always":
                    status, body = 403, b"forbidden"
                elif fault == "404-always" or not file.is_file():
                    status, body = 404, b"not found"
                else:
                    body = file.read_bytes()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                if fault == "cut":
                    self.send_header("Connection", "close")
                self.end_headers()
                if head:
                    return
                if fault == "cut" and status == 200:  # half the body, then the connection goes away
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

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
