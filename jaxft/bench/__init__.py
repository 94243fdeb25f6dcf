"""Benchmarks of the real engine on this machine, optionally against transformers + PEFT.

    python -m jaxft.bench train [--model qwen3-0.6b | shape flags] [--vs peft] [--json]
    python -m jaxft.bench generate [--model ...] [--batch 8] [--vs peft] [--json]
    python -m jaxft.bench plan --recipe lm|embedllm|condense [--devices 8 --mesh fsdp=8] [--json]
    python -m jaxft.bench.summary --model PATH_OR_PRESET      # the decoder's module tree, shapes, axes, counts

``train`` times the jitted LoRA (or full) train step after compiling it, with
median step time, tokens/s, peak RSS and MFU against a matmul peak measured
here in the same dtype. ``generate`` times prefill and decode of
``jaxft.sampling.generate``. ``plan`` compiles a train step for N fake devices
from shapes alone and prints XLA's per-device memory plan. ``--vs peft`` runs
the same shape in PyTorch (``jaxft/bench/peer_peft.py``) in alternating
subprocesses. Figures and the FLOP formula: ``benchmarks/README.md``.
"""
