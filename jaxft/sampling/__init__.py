"""Text generation: a jit-compiled prefill + decode loop on the decoder's KV cache."""

from jaxft.sampling.config import FINISH_REASONS, SamplingConfig
from jaxft.sampling.generate import GenerationOutput, generate
from jaxft.sampling.text import decode_and_trim, stop_sequences_from_strings, trim_at_stop

__all__ = ["generate", "GenerationOutput", "SamplingConfig", "FINISH_REASONS", "stop_sequences_from_strings",
           "trim_at_stop", "decode_and_trim"]
