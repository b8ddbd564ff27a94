"""The content-model kinds a configuration may name (``content.kind``), without the models: the
configuration schema lists them, and ``rvc-lora config`` should not have to load torch to do so."""

# hubert (fairseq / Hugging Face HuBERT or ContentVec), torchscript (any encoder of the generic interface),
# or auto (a TorchScript archive is detected; anything else is read as HuBERT).
CONTENT_KINDS = ("auto", "hubert", "torchscript")
