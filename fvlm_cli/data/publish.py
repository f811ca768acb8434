"""Publish a finished shard set to a Hub dataset repo (SPEC §3.7): `fvlm upload-shards DIR --repo-id OWNER/NAME`.

    publish_shards("shards/train", "me/videos", token=token)   # -> {"uploaded": 12, "skipped": 0, "url": "hf://..."}

The shards go up first, a few per commit, then `manifest.json` (and `failures.jsonl`) last, so a reader that
finds the manifest finds every shard it lists. Resumable: a shard already in the repo with the manifest's
sha256 (the Hub's LFS sha256 of the file), or its size when the manifest has no sum, is skipped, so a rerun
after a failure uploads only what is missing. Train from it with `data.train=[{path: hf://datasets/OWNER/NAME}]`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from fvlm_cli.data.shards import FAILURES, MANIFEST, read_manifest, sha256_file
from fvlm_cli.errors import DataError, FvlmError


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"


def _remote_files(api, repo_id: str, prefix: str) -> dict[str, tuple[int, Optional[str]]]:
    """{path: (size, lfs sha256 or None)} of the files already in the repo under `prefix`."""
    from huggingface_hub.errors import EntryNotFoundError
    from huggingface_hub.hf_api import RepoFile

    try:
        tree = api.list_repo_tree(repo_id, path_in_repo=prefix or None, recursive=True, repo_type="dataset")
        return {f.path: (f.size, f.lfs.sha256 if f.lfs else None) for f in tree if isinstance(f, RepoFile)}
    except EntryNotFoundError:
        return {}


def publish_shards(folder: str | Path, repo_id: str, *, token: Optional[str], path_in_repo: str = "",
                   private: Optional[bool] = None, per_commit: int = 8, log: Callable[[str], None] = lambda m: None,
                   progress: bool = True) -> dict:
    """Upload the shards of `folder` and then its manifest; skip shards already there (see the module doc)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from fvlm_cli.progress import Progress
    from fvlm_cli.release.upload import check_repo_id, check_visibility, hub_endpoint

    check_repo_id(repo_id)
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest.get("complete") is False:
        raise DataError(f"{folder}: the manifest says the set is incomplete (parts {manifest.get('parts')}); "
                        f"finish `fvlm precompute` for every part first")
    shards = manifest["shards"]
    if not shards:
        raise DataError(f"{folder}: the manifest lists no shards")
    for s in shards:
        path = folder / s["path"]
        if not path.is_file():
            raise DataError(f"{folder}: shard {s['path']} listed in the manifest is missing")
        if s.get("sha256") and s.get("bytes") is not None and path.stat().st_size != s["bytes"]:
            raise DataError(f"{path}: {path.stat().st_size} bytes, the manifest says {s['bytes']}")
    prefix = path_in_repo.strip("/")
    join = (lambda p: f"{prefix}/{p}") if prefix else (lambda p: p)
    api = HfApi(endpoint=hub_endpoint(), token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)  # None: the owner's default
        check_visibility(api, repo_id, "dataset", private)
        there = _remote_files(api, repo_id, prefix)
    except FvlmError:
        raise
    except Exception as e:
        raise DataError(f"{hub_endpoint()}: cannot reach the dataset repo {repo_id} ({_one_line(e)})") from None

    def uploaded(s: dict) -> bool:
        have = there.get(join(s["path"]))
        if have is None:
            return False
        if s.get("sha256") and have[1]:
            return have[1] == s["sha256"]
        return have[0] == (s.get("bytes") if s.get("bytes") is not None else (folder / s["path"]).stat().st_size)

    todo = [s for s in shards if not uploaded(s)]
    skipped = len(shards) - len(todo)
    if skipped:
        log(f"{skipped} of {len(shards)} shard(s) already in {repo_id}: skipped")
    bars = Progress(progress, prefix="upload-shards", unit="shards")
    bars.add("shards", len(shards), completed=skipped)
    done = 0
    try:
        for i in range(0, len(todo), max(1, per_commit)):
            chunk = todo[i:i + max(1, per_commit)]
            for s in chunk:  # a changed local file is caught before it is published under the manifest's sum
                if s.get("sha256") and sha256_file(folder / s["path"]) != s["sha256"]:
                    raise DataError(f"{folder / s['path']}: sha256 differs from the manifest; re-run precompute")
            ops = [CommitOperationAdd(path_in_repo=join(s["path"]), path_or_fileobj=str(folder / s["path"]))
                   for s in chunk]
            first, last = skipped + i + 1, skipped + i + len(chunk)
            api.create_commit(repo_id, ops, commit_message=f"fvlm shards {first}-{last} of {len(shards)}",
                              repo_type="dataset")
            done += len(chunk)
            bars.advance("shards", len(chunk))
        extra = [MANIFEST] + ([FAILURES] if (folder / FAILURES).exists() else [])
        api.create_commit(repo_id, [CommitOperationAdd(path_in_repo=join(n), path_or_fileobj=str(folder / n))
                                    for n in extra],
                          commit_message=f"fvlm shard manifest ({len(shards)} shards, {manifest.get('samples')} samples)",
                          repo_type="dataset")
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"uploading to {repo_id} stopped after {done} new shard(s) ({_one_line(e)}); rerun the "
                        f"same command to upload the rest (uploaded shards are skipped)") from None
    finally:
        bars.close()
    url = f"hf://datasets/{repo_id}" + (f"/{prefix}" if prefix else "")
    return {"repo_id": repo_id, "endpoint": hub_endpoint(), "uploaded": done, "skipped": skipped,
            "shards": len(shards), "samples": manifest.get("samples"), "url": url}

