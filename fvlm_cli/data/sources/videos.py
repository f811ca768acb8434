"""`videos`: your own media: a folder of videos/images, or a JSONL/JSON list describing them.

Folder: every video/image under it (recursively, sorted; hidden folders skipped). The caption is the
same-stem `.txt` file beside it (`clip.mp4` + `clip.txt`); a file without one is recorded as a failure
"no caption". Sample id = the path relative to the folder.

JSONL (or a JSON list), one row per sample, paths relative to the file (absolute paths and http(s) URLs
work too):
    {"video": "a.mp4", "caption": "..."}                           -> caption sample
    {"image": "b.jpg", "conversations": [{"from": "human", "value": "<image>\\nWhat is it?"},
                                         {"from": "gpt", "value": "A cat."}]}   -> sft sample (all turns)
    {"path": "c.mov", "messages": [{"role": "user", "content": "..."}, ...]}  -> sft sample
    {"messages": [...]}   (no media)                              -> text sample
Optional "id" (else `{file stem}-{row number}`) and "prompt" (the user turn of a caption sample).
`--set prompt=...` changes the default caption prompt.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator, Optional

from fvlm_cli.data.media import IMAGE_EXTS, VIDEO_EXTS
from fvlm_cli.data.sources import _hub
from fvlm_cli.data.sources.base import RawSample, SourceOptions
from fvlm_cli.errors import DataError

NAME = "videos"
KIND_DEFAULT = "caption"
VIDEO_PROMPT = "Describe this video."
IMAGE_PROMPT = "Describe this image."
MEDIA_KEYS = ("video", "image", "path")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
          "model": "assistant", "system": "system"}
# LLaVA-style placeholders mark where visual tokens went in another model's prompt; fvlm places frames itself
_PLACEHOLDER = re.compile(r"[ \t]*<(?:image|video)>[ \t]*\n?")


def iter_samples(input: Optional[str], opts: SourceOptions) -> Iterator[RawSample]:
    if not input:
        raise DataError("videos needs --input: a folder of videos/images or a JSONL file")
    path = Path(input).expanduser()
    if not path.exists():
        raise DataError(f"input not found: {input}")
    prompt = opts.extra.get("prompt")
    if path.is_dir():
        return _hub.take(_folder(path, media_files(path), prompt), opts.limit)
    if path.suffix.lower() not in (".jsonl", ".json"):
        raise DataError(f"videos: {path} is neither a folder nor a .jsonl/.json file")
    return _hub.take(_rows(path, prompt), opts.limit)


def _caption_messages(caption: str, is_image: bool, prompt: Optional[str]) -> list[dict]:
    question = prompt or (IMAGE_PROMPT if is_image else VIDEO_PROMPT)
    return [{"role": "user", "content": str(question)}, {"role": "assistant", "content": caption}]


def media_files(root: Path) -> list[Path]:
    """Every video/image under `root` (hidden folders skipped), sorted by relative path."""
    exts = VIDEO_EXTS | IMAGE_EXTS
    files = sorted((p for p in root.rglob("*") if p.suffix.lower() in exts and p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(root).parts[:-1])),
                   key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise DataError(f"videos: no video or image files under {root}")
    return files


def _folder(root: Path, files: list[Path], prompt: Optional[str]) -> Iterator[RawSample]:
    for path in files:
        id = path.relative_to(root).as_posix()
        is_image = path.suffix.lower() in IMAGE_EXTS
        kind = "image" if is_image else "video"
        txt = path.with_suffix(".txt")
        caption = txt.read_text(encoding="utf-8", errors="replace").strip() if txt.is_file() else ""
        if not caption:
            yield RawSample(id=id, source=NAME, kind="caption", messages=[], media=str(path), media_kind=kind,
                            error="no caption" if not txt.is_file() else f"empty caption file {txt.name}")
            continue
        yield RawSample(id=id, source=NAME, kind="caption", messages=_caption_messages(caption, is_image, prompt),
                        media=str(path), media_kind=kind)


def _rows(path: Path, prompt: Optional[str]) -> Iterator[RawSample]:
    seen: set[str] = set()
    for i, (row, bad) in enumerate(_hub.iter_json_records(path)):
        id = f"{path.stem}-{i}"
        if isinstance(row, dict) and row.get("id") not in (None, ""):
            id = str(row["id"]) if str(row["id"]) not in seen else f"{row['id']}-{i}"
        seen.add(id)
        try:
            if bad:
                raise ValueError(bad)
            yield _row_sample(id, row, path.parent, prompt)
        except _hub.BAD_ROW as e:
            yield _hub.error_sample(id, NAME, KIND_DEFAULT, _hub.row_error(e))


def _row_sample(id: str, row: Any, base: Path, prompt: Optional[str]) -> RawSample:
    if not isinstance(row, dict):
        raise ValueError(f"row is a {type(row).__name__}, not an object")
    keys = [k for k in MEDIA_KEYS if row.get(k) not in (None, "")]
    if len(keys) > 1:
        raise ValueError(f"row has several media fields ({', '.join(keys)}); give one")
    media, media_kind = None, None
    if keys:
        value = row[keys[0]]
        if not isinstance(value, str):
            raise ValueError(f"{keys[0]!r} must be one path or URL, got {type(value).__name__}")
        media = value if re.match(r"^https?://", value) or Path(value).is_absolute() else str(base / value)
        media_kind = {"video": "video", "image": "image"}.get(keys[0])
        if media_kind is None:
            media_kind = "image" if Path(value).suffix.lower() in IMAGE_EXTS else None
    turns = row.get("conversations") if row.get("conversations") is not None else row.get("messages")
    if turns is not None:
        messages = _messages(turns)
        kind = "sft" if media is not None else "text"
        return RawSample(id=id, source=NAME, kind=kind, messages=messages, media=media, media_kind=media_kind)
    caption = row.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError("row has no caption, conversations or messages")
    if media is None:
        raise ValueError("a caption row needs a video, image or path")
    messages = _caption_messages(caption.strip(), media_kind == "image", row.get("prompt") or prompt)
    return RawSample(id=id, source=NAME, kind="caption", messages=messages, media=media, media_kind=media_kind)


def _messages(turns: Any) -> list[dict]:
    """LLaVA ({"from", "value"}) or chat ({"role", "content"}) turns -> [{"role", "content"}], all kept."""
    if not isinstance(turns, list) or not turns:
        raise ValueError("conversations must be a non-empty list of turns")
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            raise ValueError(f"turn {turn!r} is not an object")
        speaker = turn.get("from", turn.get("role"))
        role = _ROLES.get(str(speaker).lower())
        if role is None:
            raise ValueError(f"unknown speaker {speaker!r}")
        content = turn.get("value", turn.get("content"))
        if isinstance(content, list):  # OpenAI-style content parts: keep the text ones
            content = "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("text"))
        if not isinstance(content, str):
            raise ValueError(f"turn of {speaker!r} has no text")
        if role == "user":
            content = _PLACEHOLDER.sub("", content)
        messages.append({"role": role, "content": content.strip()})
    roles = {m["role"] for m in messages}
    if "user" not in roles or "assistant" not in roles:
        raise ValueError("a conversation needs a user turn and an assistant turn")
    return messages
