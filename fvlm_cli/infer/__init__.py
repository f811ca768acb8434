"""File-level inference: load media -> tokenise -> generate, shared by caption, compare-modes and serve.

`fvlm_cli.model` works on tensors only; this package is where files, bytes and prompts become tensors:

    core       decode one video/image (the media policy of fvlm_cli.data.media), encode prompts, generate
    inputs     what `fvlm caption` accepts: files, folders (recursive), JSONL/CSV/TXT lists, shard sets
    captioner  dataset-scale captioning: background decoding, batching, --out append/resume, --gpus N
    settings   the option dataclasses (light: no torch), bound to CLI flags by fvlm_cli.commands._common.flag

Heavy modules load on first use of these names.
"""

_LAZY = {"generate": "fvlm_cli.infer.core", "generate_clips": "fvlm_cli.infer.core", "load_clip": "fvlm_cli.infer.core",
         "Generation": "fvlm_cli.infer.core", "prepare_media": "fvlm_cli.infer.core"}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fvlm_cli.infer' has no attribute {name!r}")
