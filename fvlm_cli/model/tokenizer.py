"""Tokenizers: the offline tiny tokenizer, or any Hugging Face tokenizer by folder or Hub id.

    tok = load_tokenizer("tiny")                                 # shipped files, no network, no training
    tok = load_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct")  # Hub id (cached or downloaded)
    tok = load_tokenizer("runs/x/checkpoints/best")              # a model folder ships its tokenizer

The tiny tokenizer is a byte-level BPE (1536 tokens) in SmolLM2-Instruct's layout: the same special tokens
at the same ids (`<|endoftext|>`=0, `<|im_start|>`=1, `<|im_end|>`=2), bos `<|im_start|>`, eos and pad
`<|im_end|>`, and the same chat template. It is built by `scripts/build_tiny_tokenizer.py` into
`fvlm_cli/assets/tiny_tokenizer/`. Pad equals eos here, as in SmolLM2: loss masks never use the pad id
as their ignore label (see fvlm_cli/data/chat.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fvlm_cli.errors import ModelLoadError

TINY = "tiny"
TINY_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny_tokenizer"


def load_tokenizer(name: str) -> Any:
    """A `PreTrainedTokenizerFast` for `name`: "tiny", a local folder, or a Hub id.

    Raises ModelLoadError (one line) when the folder has no tokenizer or the Hub cannot be reached.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if name == TINY:
        if not (TINY_DIR / "tokenizer.json").exists():
            raise ModelLoadError(f"tiny tokenizer files missing in {TINY_DIR} (run scripts/build_tiny_tokenizer.py)")
        return _check(PreTrainedTokenizerFast.from_pretrained(str(TINY_DIR)), name)
    path = Path(name).expanduser()
    if path.is_dir():
        if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            raise ModelLoadError(f"{path}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
        try:
            if (path / "tokenizer.json").exists():  # fvlm folders: AutoTokenizer would read our config.json as an LLM's
                return _check(PreTrainedTokenizerFast.from_pretrained(str(path)), name)
            return _check(AutoTokenizer.from_pretrained(str(path)), name)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{path}: cannot load its tokenizer ({_first_line(e)})") from None
    if not re.fullmatch(r"[\w-][\w.-]*(/[\w.-]+)?", name):  # not a Hub id ("org/name" or "name")
        raise ModelLoadError(f"tokenizer folder not found: {name}")
    try:
        return _check(AutoTokenizer.from_pretrained(name), name)
    except Exception as e:  # offline, unknown repo, gated repo: huggingface_hub raises many types
        raise ModelLoadError(
            f"cannot load tokenizer {name!r} from the Hub ({_first_line(e)}); "
            f"offline? use `--model tiny` for the offline tiny model") from None


def _check(tokenizer: Any, name: str) -> Any:
    """Give the tokenizer a pad token (= eos, as SmolLM2-Instruct does) when it has none."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"tokenizer {name!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]
