"""Fetching media over http(s): timeout, size cap, bounded retries with backoff (SPEC §7).

`fetch` is what precompute workers call for a sample whose media is a URL (WebVid's `contentUrl`).
Only the standard library is used, so a bare install can download. (Hub dataset snapshots are
`sources/_hub.py`'s business.)
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from fvlm_cli.errors import DataError, storage_error

USER_AGENT = "fvlm-precompute/1 (+https://huggingface.co/sanps/fVLM-135M)"
_CHUNK = 1 << 16


@dataclass
class FetchOptions:
    """How media URLs are downloaded (the precompute driver passes these to `fetch`)."""

    timeout: float = 30.0                # seconds of silence (connect or read) before an attempt is abandoned
    max_bytes: int = 512 * 1024 * 1024   # size cap per file; bigger files are rejected, never truncated
    retries: int = 3                     # extra attempts after a 5xx, 429, timeout or dropped connection
    backoff: float = 1.0                 # first retry waits this long, then 2x, 4x, ...
    max_seconds: float = 600.0           # one attempt's whole duration: a server trickling bytes cannot hold a worker


class _Retryable(Exception):
    """A failure worth another attempt (server error, timeout, connection dropped)."""


class _SchemeCheckingRedirects(urllib.request.HTTPRedirectHandler):
    # urllib would follow a redirect to ftp://; downloads are http(s) only, including after redirects
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            raise DataError(f"refusing redirect to a non-http(s) URL: {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_opener = urllib.request.build_opener(_SchemeCheckingRedirects())


def is_url(value: object) -> bool:
    """True for a string that names a remote resource (any scheme://, not a Windows drive letter)."""
    return isinstance(value, str) and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+://", value) is not None


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def url_filename(url: str) -> str:
    """A stable local file name for `url`: a hash (unique) plus the URL's extension (for the decoder)."""
    path = urllib.parse.urlsplit(url).path
    ext = os.path.splitext(path)[1].lower()
    if not re.fullmatch(r"\.[a-z0-9]{1,5}", ext):
        ext = ""
    return hashlib.sha1(url.encode()).hexdigest()[:20] + ext


def fetch(url: str, dest_dir: str | Path, *, timeout: float = 30.0, max_bytes: int = 512 * 1024 * 1024,
          retries: int = 3, backoff: float = 1.0, max_seconds: float = 600.0) -> Path:
    """Download `url` into `dest_dir` and return the file's path (an existing complete download is reused).

    http(s) only. A 4xx answer fails at once; a 5xx/429 answer, a timeout or a dropped connection is tried
    again up to `retries` times, waiting `backoff`, 2x`backoff`, ... between attempts, and so is an attempt that
    takes longer than `max_seconds` in all (a server that trickles bytes never trips the read `timeout`). A file
    larger than `max_bytes` (by Content-Length, or counted while streaming) is rejected. Raises `DataError` with a
    one-line reason (a full disk: `StorageError`); a partial file never stays behind.
    """
    scheme = urllib.parse.urlsplit(url).scheme.lower() if isinstance(url, str) else ""
    if scheme not in ("http", "https"):
        raise DataError(f"only http(s) URLs can be downloaded, got {str(url)[:200]!r}")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / url_filename(url)
    if dest.exists():
        return dest  # written by an earlier attempt: the rename below only ever publishes complete files

    last = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _download_once(url, dest, timeout=timeout, max_bytes=max_bytes, max_seconds=max_seconds)
            return dest
        except _Retryable as e:
            last = str(e)
    tries = f"{retries + 1} attempt{'s' if retries else ''}"
    raise DataError(f"download failed after {tries}: {last}")


def _download_once(url: str, dest: Path, *, timeout: float, max_bytes: int, max_seconds: float) -> None:
    tmp = dest.with_name(f".{dest.name}.part{os.getpid()}")
    t0 = time.monotonic()
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with _opener.open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise DataError(f"file is {_mib(int(length))}, over the {_mib(max_bytes)} size cap: {url}")
            size = 0
            with open(tmp, "wb") as f:
                while True:
                    chunk = response.read1(_CHUNK)  # what has arrived: read() would wait for all _CHUNK bytes
                    if not chunk:
                        break
                    if time.monotonic() - t0 > max_seconds:
                        raise _Retryable(f"did not finish within {max_seconds:g} s ({_mib(size)} so far): {url}")
                    size += len(chunk)
                    if size > max_bytes:
                        raise DataError(f"file exceeds the {_mib(max_bytes)} size cap while downloading: {url}")
                    f.write(chunk)
            if length is not None and length.isdigit() and size < int(length):
                raise _Retryable(f"connection closed after {size} of {length} bytes: {url}")
        os.replace(tmp, dest)
    except urllib.error.HTTPError as e:
        reason = f"HTTP {e.code} {e.reason}: {url}"
        if e.code >= 500 or e.code in (408, 429):
            raise _Retryable(reason) from None
        raise DataError(reason) from None
    except (socket.timeout, TimeoutError):
        raise _Retryable(f"timed out after {timeout:g} s: {url}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (socket.timeout, TimeoutError)):
            raise _Retryable(f"timed out after {timeout:g} s: {url}") from None
        raise _Retryable(f"cannot connect ({e.reason}): {url}") from None
    except OSError as e:
        if (full := storage_error(e)) is not None:  # the disk, not the server: no retry, no blame on the URL
            raise full from None
        raise _Retryable(f"connection error ({type(e).__name__}: {e}): {url}") from None
    except http.client.HTTPException as e:  # truncated body
        raise _Retryable(f"connection error ({type(e).__name__}: {e}): {url}") from None
    finally:
        tmp.unlink(missing_ok=True)
