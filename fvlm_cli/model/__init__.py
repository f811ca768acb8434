"""The model: DINOv2 deep-query encoder, FoveatedVLM (three modes), generation, folders."""
