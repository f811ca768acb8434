"""The media of a request as bytes: a data: URI, an http(s) URL (timeout, size cap), or a local file when allowed."""

from __future__ import annotations

import base64
import binascii
import shutil
import tempfile
import urllib.parse
from pathlib import Path

from fvlm_cli.serve.protocol import ApiError


def media_bytes(url: str, *, allow_local: bool, max_bytes: int, timeout: float) -> bytes:
    """Raises ApiError: 400 (bad URI, local file refused or missing, fetch failed), 413 (over `max_bytes`)."""
    scheme = urllib.parse.urlsplit(url).scheme.lower() if "://" in url or url.startswith("data:") else ""
    if scheme == "data":
        return _data_uri(url, max_bytes)
    if scheme in ("http", "https"):
        return _download(url, max_bytes, timeout)
    if scheme in ("", "file"):
        if not allow_local:
            raise ApiError(400, "local file paths are not accepted by this server (start it with "
                                "--allow-local-files); send an http(s) URL or a data: URI", "messages",
                           "local_files_disabled")
        path = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path) if scheme == "file" else url).expanduser()
        if not path.is_file():
            raise ApiError(400, f"media file not found: {path}", "messages", "media_not_found")
        if path.stat().st_size > max_bytes:
            raise ApiError(413, f"media file is over the {max_bytes / 2**20:.0f} MB limit", "messages")
        return path.read_bytes()
    raise ApiError(400, f"unsupported media URL scheme {scheme!r}: use http(s), data: or (when allowed) a local path",
                   "messages")


def _data_uri(url: str, max_bytes: int) -> bytes:
    head, sep, payload = url[5:].partition(",")
    if not sep:
        raise ApiError(400, "malformed data: URI (no comma)", "messages", "bad_data_uri")
    if head.endswith(";base64"):
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "malformed data: URI (invalid base64)", "messages", "bad_data_uri") from None
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise ApiError(413, f"media is over the {max_bytes / 2**20:.0f} MB limit", "messages")
    return data


def _download(url: str, max_bytes: int, timeout: float) -> bytes:
    from fvlm_cli.data.download import fetch
    from fvlm_cli.errors import DataError

    tmp = tempfile.mkdtemp(prefix="fvlm-serve-")
    try:
        path = fetch(url, tmp, timeout=timeout, max_bytes=max_bytes, retries=1, backoff=0.5, max_seconds=timeout)
        return path.read_bytes()
    except DataError as e:
        status = 413 if "size cap" in str(e) else 400
        raise ApiError(status, f"cannot fetch media: {e}", "messages", "media_fetch_failed") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
