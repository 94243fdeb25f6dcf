"""Converting weights in and out: HF safetensors, GGUF, PEFT adapters, Orbax train state."""

from jaxft.checkpoint.hf import load_pretrained, save_pretrained
from jaxft.checkpoint.sources import CheckpointError

__all__ = ["load_pretrained", "save_pretrained", "CheckpointError"]
