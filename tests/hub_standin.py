"""A local stand-in of the Hugging Face Hub API on 127.0.0.1, serving folders as dataset repos.

It answers the calls `huggingface_hub.snapshot_download` / `hf_hub_download` make (repo info, the recursive
tree listing, HEAD/GET of `resolve/<rev>/<path>`), so tests run the real client: its `allow_patterns`
filtering decides what is fetched, and a pattern list that misses the archives leaves them out (the test
then fails on the missing videos). `fetched[repo]` lists the files actually downloaded.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

SHA = "0123456789abcdef0123456789abcdef01234567"


class HubStandIn:
    def __init__(self):
        self.repos: dict[str, Path] = {}
        self.branches: dict[tuple[str, str], Path] = {}
        self.fetched: dict[str, list[str]] = defaultdict(list)
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
                    return self._json([{"type": "file", "path": f, "size": (root / f).stat().st_size,
                                        "oid": hashlib.sha1((root / f).read_bytes()).hexdigest()} for f in files])
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

    def snapshot_download(self, **kwargs) -> str:
        """The real `huggingface_hub.snapshot_download`, pointed at this stand-in."""
        from huggingface_hub import snapshot_download

        return snapshot_download(endpoint=self.url, **kwargs)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
