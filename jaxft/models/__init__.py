"""Model code: the decoder family and the layers recipes build on."""

from jaxft.models.config import ConfigError, DecoderConfig, load_config
from jaxft.models.decoder import KVCache, forward, init_cache
from jaxft.models.init import abstract_params, init_params
from jaxft.models.modules import CausalLM

__all__ = ["ConfigError", "DecoderConfig", "load_config", "KVCache", "forward", "init_cache",
           "init_params", "abstract_params", "CausalLM"]
