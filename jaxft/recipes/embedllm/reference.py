"""A checkpoint of the reference (CharlieYates1/EmbedLLM, ``train.py``) as a jaxft embedllm export.

The reference saves, in ``checkpoint-N/`` or ``final/``, the LLM's PEFT adapter
(``adapter_config.json`` + ``adapter_model.safetensors``), its tokenizer, and
``additional_components.pt``: ``{"compressor", "projection", "perceiver"}`` state dicts,
where ``perceiver`` (its ``PerceiverIOModule``) holds ``perceiver.*`` (a transformers
``PerceiverModel``) and ``input_projection.*``; a top-level ``input_projection`` entry
is read too. The compressor is torch's ``nn.MultiheadAttention`` (``in_proj_weight``
stacks the query, key and value maps) under one learned ``query`` [1, 1, D] and a
LayerNorm. The Perceiver's shape comes from its config (the checkpoint holds no config).

With no history the reference projects a zero latent, so the imported ``empty_history``
is the projection's bias: the imported model computes what the reference computes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxft.checkpoint.sources import CheckpointError
from jaxft.recipes.embedllm.data import Layout
from jaxft.recipes.embedllm.model import CondenserConfig
from jaxft.recipes.embedllm.perceiver import from_hf_state, state_arrays, torch_load

COMPONENTS_FILE = "additional_components.pt"
REFERENCE_HEADS = 8  # CrossAttentionCompressor(latent_dim, num_heads=8)
REFERENCE_DROPOUT = 0.1  # its default dropout on the attention weights and the output
# data_utils.py at 6d80eb8: turns split on <|im_start|>, whole conversations within max_length 2048;
# model.py: the last turn at most 100 tokens
REFERENCE_LAYOUT = Layout(max_turns=8, max_conversation_tokens=2048, max_last_turn_tokens=100,
                          separator="<|im_start|>", append_eos=False)


def _components(file: Path) -> dict[str, dict[str, np.ndarray]]:
    """``additional_components.pt`` as {component: {tensor name: float32 array}} (read with weights_only)."""
    if not file.is_file():
        raise FileNotFoundError(f"{file}: not found; is {file.parent} a checkpoint of the reference's train.py?")
    saved = torch_load(file)
    if not isinstance(saved, dict):
        raise CheckpointError(f"{file}: expected a dict of state dicts, got {type(saved).__name__}")
    out = {}
    for name in ("compressor", "projection", "perceiver"):
        if not isinstance(saved.get(name), dict):
            raise CheckpointError(f"{file}: entry '{name}' is missing (found: {', '.join(map(str, saved))})")
        out[name] = state_arrays(saved[name])
    if isinstance(saved.get("input_projection"), dict):
        extra = state_arrays(saved["input_projection"])
        out["perceiver"].update({f"input_projection.{k}": v for k, v in extra.items()})
    return out


def _tensor(state: dict[str, np.ndarray], name: str, where: str) -> np.ndarray:
    if name not in state:
        raise CheckpointError(f"{where}: tensor '{name}' is missing")
    return state[name]


def _linear(state: dict, prefix: str, where: str) -> dict[str, jnp.ndarray]:
    """A torch Linear ([out, in] weight) as a jaxft ``Linear`` ([in, out] kernel)."""
    return {"kernel": jnp.asarray(_tensor(state, f"{prefix}weight", where).T),
            "bias": jnp.asarray(_tensor(state, f"{prefix}bias", where))}


def encoder_params(components: dict[str, dict[str, np.ndarray]], perceiver_cfg, where: str) -> dict[str, Any]:
    """The ``HistoryEncoder`` tree of the reference's components."""
    comp, proj, perc = components["compressor"], components["projection"], components["perceiver"]
    cw = f"{where} (compressor)"
    in_w, in_b = _tensor(comp, "cross_attention.in_proj_weight", cw), _tensor(comp, "cross_attention.in_proj_bias", cw)
    d = in_w.shape[1]
    attention = {name: {"kernel": jnp.asarray(in_w[i * d:(i + 1) * d].T), "bias": jnp.asarray(in_b[i * d:(i + 1) * d])}
                 for i, name in enumerate(("q_proj", "k_proj", "v_proj"))}
    attention["out_proj"] = _linear(comp, "cross_attention.out_proj.", cw)
    compressor = {"query": jnp.asarray(_tensor(comp, "query", cw).reshape(d)), "attention": attention,
                  "layer_norm": {"scale": jnp.asarray(_tensor(comp, "layer_norm.weight", cw)),
                                 "bias": jnp.asarray(_tensor(comp, "layer_norm.bias", cw))}}
    projection = _linear(proj, "", f"{where} (projection)")
    return {"input_projection": _linear(perc, "input_projection.", f"{where} (perceiver)"),
            "perceiver": from_hf_state(perceiver_cfg, perc, f"{where} (perceiver)", prefix="perceiver."),
            "compressor": compressor, "projection": projection,
            "empty_history": projection["bias"]}  # projection(zero latent), the reference's no-history prefix


def import_reference(checkpoint: str | Path, out: str | Path, *, llm: str = "",
                     perceiver: str = "deepmind/multimodal-perceiver", layout: Layout = REFERENCE_LAYOUT) -> Path:
    """Write the jaxft export of a reference checkpoint directory; ``llm`` defaults to the adapter's
    ``base_model_name_or_path``, ``perceiver`` is where the Perceiver's ``config.json`` is."""
    import json

    from transformers import AutoTokenizer

    from jaxft import lora as lora_lib
    from jaxft.checkpoint.hf import load_pretrained, resolve
    from jaxft.recipes.embedllm.core import EmbedLLM, split_encoder_params
    from jaxft.recipes.embedllm.export import EmbedChat, export_embedllm
    from jaxft.recipes.embedllm.perceiver import PerceiverEncoderConfig

    checkpoint = Path(checkpoint)
    components = _components(checkpoint / COMPONENTS_FILE)
    config_file = resolve(perceiver) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: not found; --perceiver names the Perceiver the reference loaded")
    pcfg = PerceiverEncoderConfig.from_hf(json.loads(config_file.read_text()), str(config_file))
    if not llm:
        llm = json.loads((checkpoint / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""
    if not llm:
        raise ValueError(f"{checkpoint}: the adapter names no base model; pass the LLM")
    cfg, llm_params = load_pretrained(llm, dtype=jnp.float32)
    adapters = lora_lib.load_peft(checkpoint, cfg)
    model = EmbedLLM(llm=cfg, perceiver=pcfg, condenser=CondenserConfig(REFERENCE_HEADS, REFERENCE_DROPOUT),
                     lora_config=adapters.config, train_perceiver=False)
    trainable, frozen = split_encoder_params(model, encoder_params(components, pcfg, str(checkpoint / COMPONENTS_FILE)))
    trainable["lora"], frozen["llm"] = adapters.params, llm_params
    chat = EmbedChat(model, layout, trainable, frozen, AutoTokenizer.from_pretrained(str(checkpoint)))
    return export_embedllm(out, chat, llm_source=str(llm))
