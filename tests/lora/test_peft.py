import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import jaxft
from jaxft import lora as jlora
from jaxft.checkpoint import CheckpointError


def _ids(vocab=128, shape=(2, 12), seed=0):
    return np.random.default_rng(seed).integers(3, vocab, size=shape)


def _torch_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.float().numpy()


def _hf(directory):
    return transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager",
                                                             dtype=torch.float32).eval()


def _random_lora(cfg, params, seed=0, **kw):
    """A fresh LoRA with non-zero B, so it changes the model."""
    lora = jlora.init(jax.random.key(seed), cfg, params, **kw)
    rng = np.random.default_rng(seed)
    new = jax.tree.map(lambda x: x, lora.params)
    for _, ab in jlora.LoRA(new, lora.config).items():
        ab["b"] = jnp.asarray(0.1 * rng.standard_normal(ab["b"].shape), jnp.float32)
    return jlora.LoRA(new, lora.config)


@pytest.mark.parametrize("family, rslora", [("qwen3", False), ("llama", True)])
def test_exported_adapter_loads_in_peft(tiny_dir, tmp_path, family, rslora):
    directory = tiny_dir(family)
    cfg, params = jaxft.load_pretrained(directory)
    lora = _random_lora(cfg, params, rank=4, alpha=8, use_rslora=rslora)
    jlora.save_peft(tmp_path / "adapter", cfg, lora, base_model_name_or_path=str(directory))

    model = peft.PeftModel.from_pretrained(_hf(directory), tmp_path / "adapter").eval()
    assert model.peft_config["default"].use_rslora is rslora
    ids = _ids()
    ref = _torch_logits(model, ids)
    ours = np.asarray(jaxft.logits(cfg, params, ids, lora=lora))
    assert np.abs(ours - np.asarray(jaxft.logits(cfg, params, ids))).max() > 1e-2  # the adapter matters
    assert np.abs(ours - ref).max() <= 1e-4

    again = jlora.load_peft(tmp_path / "adapter", cfg)
    assert again.config == lora.config
    jax.tree.map(np.testing.assert_array_equal, again.params, lora.params)


@pytest.fixture(scope="module")
def peft_made_adapter(tiny_dir, tmp_path_factory):
    """An adapter written by peft itself (random non-zero lora_B), and the peft model's logits."""
    directory = tiny_dir("qwen2")
    config = peft.LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "v_proj", "down_proj"],
                             lora_dropout=0.1, task_type="CAUSAL_LM")
    model = peft.get_peft_model(_hf(directory), config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn_like(p))
    model.eval()
    out = tmp_path_factory.mktemp("peft") / "adapter"
    model.save_pretrained(out)
    return directory, out, _torch_logits(model, _ids())


def test_peft_made_adapter_loads(peft_made_adapter):
    directory, adapter, ref = peft_made_adapter
    cfg, params = jaxft.load_pretrained(directory)
    lora = jlora.load_peft(adapter, cfg)
    assert (lora.config.rank, lora.config.alpha, lora.config.dropout) == (4, 12.0, 0.1)
    assert lora.config.targets == ("q_proj", "v_proj", "down_proj")
    assert np.abs(np.asarray(jaxft.logits(cfg, params, _ids(), lora=lora)) - ref).max() <= 1e-4


def test_merged_checkpoint_loads_in_transformers_alone(peft_made_adapter, tmp_path):
    directory, adapter, ref = peft_made_adapter
    cfg, params = jaxft.load_pretrained(directory)
    merged = jlora.merge(cfg, params, jlora.load_peft(adapter, cfg))
    jaxft.save_pretrained(tmp_path / "merged", cfg, merged)
    assert np.abs(_torch_logits(_hf(tmp_path / "merged"), _ids()) - ref).max() <= 1e-4


def _edit_config(adapter, tmp_path, **changes):
    out = tmp_path / "edited"
    out.mkdir()
    config = json.loads((adapter / "adapter_config.json").read_text())
    config.update(changes)
    (out / "adapter_config.json").write_text(json.dumps(config))
    (out / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
    return out


@pytest.mark.parametrize("change", [
    {"use_dora": True}, {"modules_to_save": ["lm_head"]}, {"rank_pattern": {"q_proj": 8}},
    {"layers_to_transform": [0]}, {"bias": "all"}, {"peft_type": "IA3"},
])
def test_unsupported_options_are_named(peft_made_adapter, tmp_path, change):
    directory, adapter, _ = peft_made_adapter
    cfg = jaxft.models.config.load_config(directory)
    key = next(iter(change))
    with pytest.raises(CheckpointError, match=f"adapter_config.json.*{key}"):
        jlora.load_peft(_edit_config(adapter, tmp_path, **change), cfg)


def test_bad_adapter_files_are_named(peft_made_adapter, tiny_dir, tmp_path):
    directory, adapter, _ = peft_made_adapter
    cfg = jaxft.models.config.load_config(directory)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        jlora.load_peft(tmp_path, cfg)

    weights = load_file(str(adapter / "adapter_model.safetensors"))
    broken = _edit_config(adapter, tmp_path)
    extra = dict(weights, **{"base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector":
                             np.ones(cfg.q_size, np.float32)})
    save_file(extra, str(broken / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match="lora_magnitude_vector"):
        jlora.load_peft(broken, cfg)

    missing = "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"
    save_file({k: v for k, v in weights.items() if k != missing}, str(broken / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match=re.escape(f"'{missing}' is missing")):
        jlora.load_peft(broken, cfg)

    (broken / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match=re.escape(f"{broken / 'adapter_model.safetensors'}: not a readable "
                                                   "safetensors file")):
        jlora.load_peft(broken, cfg)

    (broken / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        jlora.load_peft(broken, cfg)

    # qwen2's adapter against a model whose q_proj is wider (qwen3: head_dim 24).
    with pytest.raises(CheckpointError, match=r"has shape \(64, 4\), expected \(96, 4\)"):
        jlora.load_peft(adapter, jaxft.models.config.load_config(tiny_dir("qwen3")))
