"""Dataset sources for `fvlm precompute SOURCE`: a plain name -> module table, imported on demand.

Every module follows the contract in `base.py` (NAME, KIND_DEFAULT, iter_samples(input, opts)).
Optional module flags the driver reads:
    REQUIRES_INPUT           False: no --input needed (synthetic); default: needed unless the module has a
                             HUB_REPO (its canonical Hub dataset, read when --input is omitted)
    WRITES_MEDIA = True      the source writes media files; the driver passes opts.extra["media_dir"]
"""

from __future__ import annotations

import importlib
from types import ModuleType

from fvlm_cli.errors import DataError

SOURCES: dict[str, str] = {
    "webvid": "fvlm_cli.data.sources.webvid",
    "openvid": "fvlm_cli.data.sources.openvid",
    "videos": "fvlm_cli.data.sources.videos",
    "cauldron": "fvlm_cli.data.sources.cauldron",
    "llava-video": "fvlm_cli.data.sources.llava_video",
    "smoltalk": "fvlm_cli.data.sources.smoltalk",
    "rlaif-v": "fvlm_cli.data.sources.rlaif_v",
    "mvbench": "fvlm_cli.data.sources.mvbench",
    "video-mme": "fvlm_cli.data.sources.video_mme",
    "pope": "fvlm_cli.data.sources.pope",
    "scienceqa": "fvlm_cli.data.sources.scienceqa",
    "mlvu": "fvlm_cli.data.sources.mlvu",
    "synthetic": "fvlm_cli.data.sources.synthetic",
}


def get_source(name: str) -> ModuleType:
    """The source module registered as `name`; `DataError` listing the valid names for an unknown one."""
    module_path = SOURCES.get(name)
    if module_path is None:
        raise DataError(f"unknown source {name!r}; valid sources: {', '.join(SOURCES)}")
    try:
        module = importlib.import_module(module_path)
    except ModuleNotFoundError as e:
        if e.name != module_path:  # a missing dependency of the module, not the module itself
            raise
        raise DataError(f"source {name!r} is not available in this build ({module_path} is missing)") from None
    if not callable(getattr(module, "iter_samples", None)):
        raise DataError(f"source {name!r}: {module_path} has no iter_samples()")
    return module
