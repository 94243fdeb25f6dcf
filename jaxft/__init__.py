"""jaxft: fine-tune decoder LLMs with JAX on TPU pods, GPUs and CPUs."""

from jaxft import lora
from jaxft.api import logits
from jaxft.checkpoint import CheckpointError, load_pretrained, save_pretrained
from jaxft.models import ConfigError, DecoderConfig
from jaxft.sampling import GenerationOutput, SamplingConfig, generate

__all__ = ["logits", "generate", "SamplingConfig", "GenerationOutput", "load_pretrained", "save_pretrained", "lora",
           "ConfigError", "CheckpointError", "DecoderConfig"]
__version__ = "0.1.0"
