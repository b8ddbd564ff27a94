"""Experiment folders, datasets and the faiss retrieval index (``rvc_lora.data.index``)."""
