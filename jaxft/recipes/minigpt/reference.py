"""Import the reference's ``.pth`` checkpoints (PlainGPT at ``47a5e8e``, ``train.py``).

Its training loop saves ``torch.save({"model": model.state_dict(), "opt": ..., "config": cfg, "step",
"best"})`` (``ckpt_minGPT.pth``) and ``{"model", "config"}`` for the best weights (``ckpt_best.pth``);
``cfg`` is a plain dict with ``d_model``, ``n_layer``, ``n_head``, ``n_kv_head`` (0: ``n_head``),
``seq_len`` and ``dropout``. The state dict is ``DecoderOnlyLM``'s (``model.py``): ``tok_emb``,
``pos_emb`` (declared, never used: positions are the fixed sin/cos table), ``blocks.{i}`` with
``n1``/``n2`` LayerNorms, ``mha.{q,k,v,out}_proj`` (with biases) and ``ffn.w1/w3/w2`` (bias-free,
``w2(w1(x) * silu(w3(x)))``), ``ln_f`` and the tied ``lm_head``. Reading needs torch (an optional
dependency) and uses ``torch.load(weights_only=True)``: nothing beyond tensors and plain containers is
unpickled.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

# the reference's module names in a block -> the HF module names of jaxft's decoder
_BLOCK = {"n1": "input_layernorm", "n2": "post_attention_layernorm", "mha.q_proj": "self_attn.q_proj",
          "mha.k_proj": "self_attn.k_proj", "mha.v_proj": "self_attn.v_proj", "mha.out_proj": "self_attn.o_proj",
          "ffn.w3": "mlp.gate_proj", "ffn.w1": "mlp.up_proj", "ffn.w2": "mlp.down_proj"}
_TOP = {"tok_emb.weight": "model.embed_tokens.weight", "ln_f.weight": "model.norm.weight",
        "ln_f.bias": "model.norm.bias"}
_UNUSED = ("pos_emb.weight", "lm_head.weight")  # never read by the forward / tied to tok_emb
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)$")
_CONFIG_KEYS = ("d_model", "n_layer", "n_head", "seq_len")


def read_pth(file: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(config, state)``: the checkpoint's config dict and its model tensors as float32 numpy arrays."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"--pth: no such file '{file}'")
    try:
        import torch
    except ImportError:
        raise ValueError(f"{file}: reading a reference .pth checkpoint needs torch (pip install torch)") from None
    try:
        ckpt = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch's own message says what is wrong with the file
        raise ValueError(f"{file}: not a readable torch file of plain tensors ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or not isinstance(
            ckpt.get("config"), dict):
        raise ValueError(f"{file}: expected the reference's checkpoint, a dict with 'model' (a state dict) and "
                         f"'config' (train.py's cfg)")
    config = ckpt["config"]
    missing = [k for k in _CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"{file}: 'config' lacks {', '.join(missing)}")
    state = {k: v.detach().float().cpu().numpy() for k, v in ckpt["model"].items() if hasattr(v, "detach")}
    return config, state


def hf_tensors(file: Path, config: dict[str, Any], state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference tensors under jaxft's HF names (torch layout); an unknown key is an error naming it."""
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if key in _TOP:
            out[_TOP[key]] = value
            continue
        if key in _UNUSED:
            continue
        m = _BLOCK_KEY.match(key)
        if m is None or m.group(2) not in _BLOCK:
            raise ValueError(f"{file}: tensor '{key}' is not part of the reference's DecoderOnlyLM (a LoRA-wrapped "
                             f"or other model's checkpoint?)")
        out[f"model.layers.{m.group(1)}.{_BLOCK[m.group(2)]}.{m.group(3)}"] = value
    if "lm_head.weight" in state and not np.array_equal(state["lm_head.weight"], state.get("tok_emb.weight")):
        raise ValueError(f"{file}: 'lm_head.weight' differs from 'tok_emb.weight' (the reference ties them)")
    return out


def reference_config(file: Path, config: dict[str, Any], state: dict[str, np.ndarray], tokenizer=None) -> dict:
    """The ``config.json`` dict of the reference model (``jaxft.recipes.minigpt.model.hf_config``)."""
    from jaxft.recipes.minigpt.model import hf_config

    if "tok_emb.weight" not in state:
        raise ValueError(f"{file}: the state dict has no 'tok_emb.weight'")
    ids = {} if tokenizer is None else dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                           pad_token_id=tokenizer.pad_token_id)
    n_head = int(config["n_head"])
    return hf_config(vocab_size=int(state["tok_emb.weight"].shape[0]), hidden_size=int(config["d_model"]),
                     num_layers=int(config["n_layer"]), num_heads=n_head,
                     num_kv_heads=int(config.get("n_kv_head") or n_head), context=int(config["seq_len"]),
                     dropout=float(config.get("dropout", 0.1)), **ids)


def load_reference(file: str | Path, tokenizer=None):
    """``(cfg, params)`` of a reference checkpoint, float32, in jaxft's layout."""
    from jaxft.checkpoint.hf_names import param_specs
    from jaxft.models.config import DecoderConfig

    file = Path(file)
    config, state = read_pth(file)
    cfg = DecoderConfig.from_hf(reference_config(file, config, state, tokenizer), source=str(file))
    tensors = hf_tensors(file, config, state)
    params: dict[str, Any] = {}
    for spec in param_specs(cfg):
        if spec.path == ("lm_head", "kernel"):
            continue
        names = spec.hf_names(cfg.num_hidden_layers)
        for name in names:
            if name not in tensors:
                raise ValueError(f"{file}: the reference's tensor for '{name}' is missing ({cfg.num_hidden_layers} "
                                 f"layers in 'config')")
            if tuple(tensors[name].shape) != spec.hf_shape:
                raise ValueError(f"{file}: the tensor for '{name}' has shape {tuple(tensors[name].shape)}, the "
                                 f"config implies {spec.hf_shape}")
        host = np.stack([tensors[n].T if spec.transpose else tensors[n] for n in names])
        node = params
        for key in spec.path[:-1]:
            node = node.setdefault(key, {})
        node[spec.path[-1]] = host if spec.stacked else host[0]
    return cfg, params


def import_pth(file: str | Path, spm_model: str | Path, output: str | Path) -> Path:
    """Write the reference checkpoint as a minigpt model directory (config.json, safetensors, tokenizer)."""
    from jaxft.recipes.minigpt.export import save_model
    from jaxft.tokenization.sentencepiece import sentencepiece_tokenizer

    if not Path(spm_model).is_file():
        raise FileNotFoundError(f"--spm: no such file '{spm_model}'")
    tokenizer = sentencepiece_tokenizer(spm_model)
    cfg, params = load_reference(file, tokenizer)
    if len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"--spm {spm_model}: {len(tokenizer)} pieces, the checkpoint's embedding has "
                         f"{cfg.vocab_size} rows")
    return save_model(output, cfg, params, tokenizer, spm_model)
