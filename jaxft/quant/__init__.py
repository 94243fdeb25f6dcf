"""Frozen kernels stored as NF4 (QLoRA, bit for bit as bitsandbytes) or int8.

    qparams = jaxft.quant.quantize(params, cfg, fmt="nf4", double_quant=True)

``jaxft.lora`` re-exports these names, as QLoRA trains LoRA adapters over such a base.
"""

from jaxft.quant.dynamic import DYNAMIC_MAP
from jaxft.quant.kernel import QuantizedKernel, bytes_per_param, quantize, quantize_kernel
from jaxft.quant.nf4 import NF4_LEVELS

__all__ = ["DYNAMIC_MAP", "NF4_LEVELS", "QuantizedKernel", "bytes_per_param", "quantize", "quantize_kernel"]
