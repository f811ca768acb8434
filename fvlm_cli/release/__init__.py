"""Publishing: a run or checkpoint -> a model folder with its model card -> the Hugging Face Hub (SPEC §6).

    from fvlm_cli.release.upload import export_model, push_folder
    exp = export_model("runs/stage2", "me/fvlm-135m")   # model folder + README.md + configs/ + results.json, validated
    push_folder(exp.folder, "me/fvlm-135m")             # create_repo + upload_folder; returns the commit URL

- `modelcard.py`: the README.md (YAML front matter for the Hub + a compact body) from config.json, the
  training stages and results.json. Pure text: no torch, no network.
- `upload.py`: find the run and its earlier stages, export, check the exported folder reproduces the source
  logits, push with `huggingface_hub` (token from HF_TOKEN or the login cache; never printed or written).
"""
