"""jaxft: fine-tune decoder LLMs with JAX on TPU pods, GPUs and CPUs.

The public names load on first use, so ``python -m jaxft.main`` can take over Ctrl-C before jax is imported.
"""

import importlib

_PUBLIC = {"logits": "jaxft.api", "generate": "jaxft.sampling", "SamplingConfig": "jaxft.sampling",
           "GenerationOutput": "jaxft.sampling", "load_pretrained": "jaxft.checkpoint",
           "save_pretrained": "jaxft.checkpoint", "ConfigError": "jaxft.models", "CheckpointError": "jaxft.checkpoint",
           "DecoderConfig": "jaxft.models"}
_SUBPACKAGES = ("lora",)

__all__ = ["logits", "generate", "SamplingConfig", "GenerationOutput", "load_pretrained", "save_pretrained", "lora",
           "ConfigError", "CheckpointError", "DecoderConfig"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        value = importlib.import_module(f"jaxft.{name}")
    elif name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    else:
        raise AttributeError(f"module 'jaxft' has no attribute '{name}'")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
