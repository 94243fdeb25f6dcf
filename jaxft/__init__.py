"""jaxft: fine-tune decoder LLMs with JAX on TPU pods, GPUs and CPUs."""

from jaxft.api import logits
from jaxft.checkpoint import CheckpointError, load_pretrained, save_pretrained
from jaxft.models import ConfigError, DecoderConfig

__all__ = ["logits", "load_pretrained", "save_pretrained", "ConfigError", "CheckpointError", "DecoderConfig"]
__version__ = "0.1.0"
