"""fvlm: foveated video vision-language models, from raw data to the Hub.

    from fvlm_cli import load_model, generate
    lm = load_model("tiny")
    print(generate(lm, ["clip.mp4"], prompt="Describe this video.", mode="autoregressive"))

Heavy modules (torch, transformers) load on first use of these names, not at `import fvlm_cli`.
"""

__version__ = "0.1.0"

_LAZY = {
    "FoveatedVLM": "fvlm_cli.model.vlm",
    "FoveatedEncoder": "fvlm_cli.model.encoder",
    "load_model": "fvlm_cli.model.build",
    "build_model": "fvlm_cli.model.build",
    "save_model_folder": "fvlm_cli.model.build",
    "preset": "fvlm_cli.model.build",
    "generate": "fvlm_cli.infer.core",
    "caption_media": "fvlm_cli.infer.core",
    "generate_clips": "fvlm_cli.infer.core",
    "load_clip": "fvlm_cli.infer.core",
    "Generation": "fvlm_cli.infer.core",
    "load_media": "fvlm_cli.data.media",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        return getattr(module, "generate" if name == "caption_media" else name)
    raise AttributeError(f"module 'fvlm_cli' has no attribute {name!r}")
