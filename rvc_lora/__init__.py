"""rvc-lora: LoRA speaker adapters for RVC generators, merged back into standard RVC models."""

__version__ = "0.1.0"
