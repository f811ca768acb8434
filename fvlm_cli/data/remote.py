"""Where shards live (SPEC §3.7): local paths, http(s) URLs, `pipe:` commands and `hf://datasets/...` paths.

    ref = resolve_shard_set("hf://datasets/me/videos/shards/*.tar")   # -> ShardSetRef(urls, counts, sha256)
    with open_shard(ref.urls[0], ShardAccess(cache_dir="/scratch/cache")) as stream: ...   # a byte stream

Streams are opened with webdataset's openers: `webdataset.gopen.gopen` for local files and `pipe:` commands,
and webdataset's `Pipe` around `curl` for http(s) and Hub files. The curl call is ours (not `gopen_curl`) so
that retries are bounded and visible: curl retries nothing itself; `fvlm_cli.data.shards.stream_shard` retries
a failed shard with backoff `access.retries` times and then names the shard in a one-line error.

A manifest (`manifest.json`, SPEC §3.2) next to the shards gives per-shard sample counts (used for elastic
resume and to notice a stream that ended early) and sha256 sums (checked when `access.verify`).
`access.cache_dir`: remote shards are downloaded once into that folder (atomic rename) and read from there.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Optional
from urllib.parse import quote

from fvlm_cli.errors import DataError

MANIFEST = "manifest.json"
REMOTE_SCHEMES = ("http://", "https://", "hf://", "pipe:")
# a revision is a branch, tag or commit, or one of the Hub's special refs (refs/pr/N, refs/convert/parquet)
_HF = re.compile(r"^hf://datasets/([^/@]+/[^/@]+)(?:@(refs/(?:pr|convert)/[^/]+|[^/]+))?(?:/(.*))?$")
# curl exit codes worth a retry (connect failure, partial file, timeout, send/recv failure, HTTP/2 stream)
_CURL_TRANSIENT = {5, 6, 7, 16, 18, 28, 35, 52, 55, 56, 92}
_CURL_TEXT = {7: "could not connect", 18: "connection closed mid-transfer", 28: "timed out",
              52: "empty reply", 56: "connection reset", 22: "HTTP error"}


@dataclass(frozen=True)
class ShardAccess:
    """How shards are opened (data.retries, data.retry_backoff, data.cache_dir, data.verify)."""

    retries: int = 5
    backoff: float = 1.0
    cache_dir: Optional[str] = None
    verify: bool = False
    timeout: float = 60.0


@dataclass
class ShardSetRef:
    """A resolved shard set: the shard URLs (sorted) and what its manifest says about them."""

    spec: str
    urls: list[str]
    counts: dict[str, int] = field(default_factory=dict)   # url -> samples (from the manifest)
    sha256: dict[str, str] = field(default_factory=dict)   # url -> sha256 (from the manifest)


class TransientError(IOError):
    """A failure worth retrying (5xx, reset, truncated stream)."""


def is_corrupt(exc: BaseException) -> bool:
    """Whether a failure says the shard's bytes are bad (not the network): a broken tar or gzip, or data that ends
    before the manifest's count. A sha256 mismatch under data.verify is not: the user asked for the check, so it
    stops the run."""
    import tarfile
    import zlib

    if isinstance(exc, (tarfile.TarError, EOFError, zlib.error)):
        return True
    return isinstance(exc, TransientError) and str(exc).startswith("stream ended after")


def is_remote(url: str) -> bool:
    return str(url).startswith(REMOTE_SCHEMES)


def expand_braces(pattern: str) -> list[str]:
    """`a{1..3}b{x,y}` -> a1bx a1by ...; numeric ranges keep zero padding (the `braceexpand` package that
    webdataset uses for its URL patterns)."""
    from braceexpand import braceexpand

    return list(braceexpand(pattern))


# ---------------------------------------------------------------- Hub paths

def hf_parts(url: str) -> tuple[str, str, str]:
    """hf://datasets/OWNER/NAME[@REV]/PATH -> (repo_id, revision, path)."""
    m = _HF.match(url)
    if not m:
        raise DataError(f"{url}: a Hub shard path is hf://datasets/OWNER/NAME[@REVISION]/PATH")
    return m.group(1), m.group(2) or "main", m.group(3) or ""


def hf_http_url(url: str) -> str:
    """The resolve URL of a Hub dataset file (HF_ENDPOINT honoured; no network call)."""
    from huggingface_hub import constants

    repo, rev, path = hf_parts(url)
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    return f"{endpoint.rstrip('/')}/datasets/{repo}/resolve/{quote(rev, safe='')}/{quote(path)}"


def _hf_list(url_dir: str) -> list[str]:
    """Files of a Hub dataset repo under a folder (recursive), as repo paths."""
    from huggingface_hub import HfApi

    repo, rev, _ = hf_parts(url_dir)
    try:
        return list(HfApi(endpoint=os.environ.get("HF_ENDPOINT")).list_repo_files(repo, repo_type="dataset",
                                                                                  revision=rev))
    except Exception as e:  # network, 401, 404: one line
        raise DataError(f"{url_dir}: cannot list the Hub dataset {repo} ({type(e).__name__}: {str(e).splitlines()[0]})") \
            from None


# ---------------------------------------------------------------- opening streams

def _curl(url: str, access: ShardAccess, headers: dict[str, str]) -> IO[bytes]:
    from webdataset.gopen import Pipe

    cmd = ["curl", "-f", "-s", "-S", "-L", "--connect-timeout", str(int(access.timeout)),
           "--speed-time", str(int(access.timeout)), "--speed-limit", "1"]
    if not headers:
        return Pipe(cmd + [url], mode="rb", bufsize=1 << 16, ignore_status=[141, 23], stderr=subprocess.PIPE)
    # headers (the Hub token) go in through a curl config on stdin: never in the process list
    pipe = Pipe(cmd + ["-K", "-", url], mode="rb", bufsize=1 << 16, ignore_status=[141, 23], stderr=subprocess.PIPE,
                stdin=subprocess.PIPE)
    config = "".join(f'header = "{k}: {v}"\n' for k, v in headers.items())
    pipe.proc.stdin.write(config.encode())
    pipe.proc.stdin.close()
    return pipe


def _hf_headers() -> dict[str, str]:
    from huggingface_hub import get_token

    token = get_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def open_raw(url: str, access: ShardAccess) -> IO[bytes]:
    """A byte stream of `url` (no cache, no retry)."""
    from webdataset.gopen import gopen

    if url.startswith(("http://", "https://")):
        return _curl(url, access, {})
    if url.startswith("hf://"):
        return _curl(hf_http_url(url), access, _hf_headers())
    return gopen(url, "rb")  # local path, file:, pipe:


def describe_failure(url: str, exc: BaseException,
                     stream: Optional[IO[bytes]] = None) -> tuple[str, bool, bool]:
    """(one-line reason, transient?, corrupt?) for a failure while reading `url`. A failed transport (an HTTP error,
    a curl or pipe exit status) is named as such and is never corruption; only past those checks does the exception
    itself speak: `is_corrupt` (the bytes are bad)."""
    proc = getattr(stream, "proc", None)
    if proc is not None:
        status = proc.poll()
        if status is None:
            try:
                proc.kill()
                status = proc.wait(5)
            except Exception:
                status = None
        err = b""
        if proc.stderr is not None:
            try:
                err = proc.stderr.read() or b""
            except Exception:
                pass
        text = err.decode(errors="replace").strip().splitlines()
        detail = text[-1] if text else ""
        if url.startswith("pipe:") and status not in (None, 0, 141):
            return f"command exited with status {status}{': ' + detail if detail else ''}", True, False
        if status == 22:
            code = re.search(r"error:? (\d{3})", detail)
            http = int(code.group(1)) if code else 0
            return f"HTTP {http or 'error'}", http >= 500 or http in (408, 429) or http == 0, False
        if status not in (None, 0, 141) and not url.startswith("pipe:"):
            return (f"curl: {_CURL_TEXT.get(status, f'exit {status}')}{' (' + detail + ')' if detail else ''}",
                    status in _CURL_TRANSIENT, False)
    if isinstance(exc, FileNotFoundError):
        return f"no such file ({exc.filename or url})", False, False
    if isinstance(exc, TransientError):
        return str(exc), True, is_corrupt(exc)
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{type(exc).__name__}: {msg[:200]}", True, is_corrupt(exc)


def close_quietly(stream: Optional[IO[bytes]]) -> None:
    if stream is None:
        return
    proc = getattr(stream, "proc", None)
    if proc is not None and proc.poll() is None:
        proc.kill()
    try:
        if proc is not None:
            stream.stream.close()
            proc.wait(5)
        else:
            stream.close()
    except Exception:
        pass


def with_retries(url: str, access: ShardAccess, what: str, fn):
    """Run fn() (which opens and reads `url`), retrying transient failures with exponential backoff."""
    attempt = 0
    while True:
        try:
            return fn()
        except DataError:
            raise
        except Exception as e:
            reason, transient, _ = describe_failure(url, e, getattr(e, "stream", None))
            attempt += 1
            if not transient or attempt > access.retries:
                tries = f" after {attempt} attempts" if attempt > 1 else ""
                raise DataError(f"{what} {shown(url)}: {reason}{tries}") from None
            time.sleep(access.backoff * 2 ** (attempt - 1))


def read_bytes(url: str, access: ShardAccess) -> bytes:
    """The whole content of a (small) file, with retries."""

    def go() -> bytes:
        stream = open_raw(url, access)
        try:
            data = stream.read()
            stream.close()  # a curl / pipe exit status is checked here
            return data
        except Exception as e:
            e.stream = stream
            raise

    return with_retries(url, access, "file", go)


# ---------------------------------------------------------------- cache

def cache_path(url: str, cache_dir: str) -> Path:
    """A cache file per URL: readable name, hashed prefix (two sets may both have shard-000000.tar)."""
    digest = hashlib.sha1(url.encode()).hexdigest()[:12]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", url.rstrip("/").rsplit("/", 1)[-1])[-80:] or "shard"
    return Path(cache_dir).expanduser() / f"{digest}-{base}"


def cached(url: str, access: ShardAccess, sha256: Optional[str] = None) -> Optional[Path]:
    """The local copy of a remote shard (downloaded now if missing), or None without a cache_dir."""
    if not access.cache_dir or not is_remote(url):
        return None
    path = cache_path(url, access.cache_dir)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")

    def go() -> Path:
        stream = open_raw(url, access)
        h = hashlib.sha256()
        try:
            with open(tmp, "wb") as f:
                while chunk := stream.read(1 << 20):
                    f.write(chunk)
                    h.update(chunk)
            stream.close()
        except Exception as e:
            tmp.unlink(missing_ok=True)
            e.stream = stream
            raise
        if access.verify and sha256 and h.hexdigest() != sha256:
            tmp.unlink(missing_ok=True)
            raise TransientError(f"sha256 mismatch (manifest {sha256[:12]}..., got {h.hexdigest()[:12]}...)")
        os.replace(tmp, path)
        return path

    return with_retries(url, access, "shard", go)


# ---------------------------------------------------------------- resolving a shard set

def shown(url: str) -> str:
    """`url` for messages and logs: a query string (a signed URL's token) is never printed."""
    return url.split("?", 1)[0] + ("?…" if "?" in url and not url.startswith("pipe:") else "")


def _glob_match(path: str, pattern: str) -> bool:
    """Glob by path segment: `*` does not cross '/' (`*.tar` is the folder's tars, not a sub-folder's too)."""
    a, b = path.split("/"), pattern.split("/")
    return len(a) == len(b) and all(fnmatch.fnmatchcase(x, y) for x, y in zip(a, b))


def _manifest_next_to(base: str, access: ShardAccess, query: str = "") -> Optional[dict]:
    """manifest.json in the remote folder `base` (a URL ending without '/'), or None when there is none. An object
    store answers 403, not 404, for a missing key when the caller may not list the bucket: also none."""
    url = f"{base}/{MANIFEST}{query}"
    try:
        data = read_bytes(url, ShardAccess(retries=min(access.retries, 2), backoff=access.backoff,
                                           timeout=access.timeout))
    except DataError as e:
        if any(t in str(e) for t in ("HTTP 404", "HTTP 403", "no such file", "HTTP error")):
            return None
        raise
    try:
        manifest = json.loads(data)
    except ValueError:
        raise DataError(f"{shown(url)}: unreadable manifest") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise DataError(f"{shown(url)}: not an fvlm shard manifest")
    return manifest


def _apply_manifest(ref: ShardSetRef, manifest: Optional[dict], base: str, query: str = "") -> None:
    if not manifest:
        return
    for entry in manifest["shards"]:
        url = f"{base}/{entry.get('path') or entry['name']}{query}"
        if "samples" in entry:
            ref.counts[url] = int(entry["samples"])
        if entry.get("sha256"):
            ref.sha256[url] = entry["sha256"]


def resolve_remote(spec: str, access: ShardAccess) -> ShardSetRef:
    """A remote shard set: a URL / hf:// brace pattern (hf:// also globs), or a folder with a manifest."""
    if spec.startswith("pipe:"):
        urls = sorted(set(expand_braces(spec)))
        return ShardSetRef(spec, urls)
    is_hf = spec.startswith("hf://")
    if is_hf:
        hf_parts(spec)  # validates the form
    query = ""
    if not is_hf and "?" in spec:  # an http(s) query (a signed URL's token, ?download=true) is not a glob
        spec, query = spec.split("?", 1)
        query = "?" + query
    last = spec.rstrip("/").rsplit("/", 1)[-1]
    if not re.search(r"\.tar(\.gz)?$|[*?\[{]", last):  # a folder: its manifest lists the shards
        base = spec.rstrip("/")
        manifest = _manifest_next_to(base, access, query)
        if manifest is None:
            raise DataError(f"{shown(spec)}: no {MANIFEST} there; give a shard pattern such as "
                            f"{shown(base)}/shard-{{000000..000009}}.tar")
        ref = ShardSetRef(spec, sorted(f"{base}/{e.get('path') or e['name']}{query}" for e in manifest["shards"]))
        _apply_manifest(ref, manifest, base, query)
        return ref
    if not is_hf and re.search(r"[*?\[]", spec):
        raise DataError(f"{spec}: an http(s) server cannot be globbed; use a brace pattern "
                        f"(shard-{{000000..000099}}.tar) or the folder URL when it has a {MANIFEST}")
    urls: list[str] = []
    for pattern in expand_braces(spec):
        if is_hf and re.search(r"[*?\[]", pattern):
            repo, rev, path = hf_parts(pattern)
            prefix = f"hf://datasets/{repo}{'@' + rev if rev != 'main' else ''}/"
            urls += [prefix + f for f in _hf_list(pattern) if _glob_match(f, path)]
        else:
            urls.append(pattern + query)
    urls = sorted(set(urls))
    if not urls:
        raise DataError(f"no shards match {spec!r}")
    ref = ShardSetRef(spec + query, urls)
    folders = sorted({u.removesuffix(query).rsplit("/", 1)[0] for u in urls})
    if len(folders) == 1:
        _apply_manifest(ref, _manifest_next_to(folders[0], access, query), folders[0], query)
    return ref
