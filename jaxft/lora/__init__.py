"""LoRA and QLoRA as parameter trees, with PEFT-compatible adapter files.

    lora = jaxft.lora.init(rng, cfg, params, rank=16, alpha=32)
    logits = jaxft.logits(cfg, params, ids, lora=lora)      # base + adapters
    jaxft.lora.save_peft("out/adapter", cfg, lora)          # peft.PeftModel loads it
    qparams = jaxft.lora.quantize(params, cfg, fmt="nf4")   # frozen NF4 base for QLoRA
"""

from jaxft.lora.adapters import (DEFAULT_TARGETS, Finetune, LoRA, LoraConfig, apply, finetune_trees, init, merge,
                                  unmerge)
from jaxft.lora.kernels import LoraKernel
from jaxft.lora.peft import load_peft, save_peft
from jaxft.quant import NF4_LEVELS, QuantizedKernel, bytes_per_param, quantize, quantize_kernel

__all__ = [
    "DEFAULT_TARGETS", "Finetune", "finetune_trees", "LoRA", "LoraConfig", "LoraKernel", "QuantizedKernel",
    "NF4_LEVELS",
    "init", "apply", "merge", "unmerge", "save_peft", "load_peft",
    "quantize", "quantize_kernel", "bytes_per_param",
]
