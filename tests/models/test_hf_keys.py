"""config.json keys: every key transformers writes for a supported family loads; a key the decoder does not
implement, or a neutral key at another value, is refused by name; the README names the accepted ones."""

import json
import re
import shutil

import numpy as np
import pytest
import transformers

import jaxft
from jaxft.models import hf_keys
from jaxft.models.config import ConfigError, DecoderConfig
from tests.configs import ROOT

IDS = np.array([[5, 17, 42, 9, 77, 3]])
FAMILIES = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
            "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_key_transformers_writes_loads(family):
    config = FAMILIES[family](vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2)
    full = config.to_dict()  # every attribute, not only those differing from the defaults
    full["architectures"] = [f"{family}ForCausalLM"]
    cfg = DecoderConfig.from_hf(full)
    head_dim = getattr(config, "head_dim", None) or 32 // 4
    assert (cfg.model_type, cfg.num_key_value_heads, cfg.head_dim) == (family, 2, head_dim)


def _with(directory, tmp_path, **change):
    copy = shutil.copytree(directory, tmp_path / "changed")
    config = json.loads((copy / "config.json").read_text())
    config.update(change)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("change, message", [
    ({"attention_dropout": 0.1}, "attention_dropout=0.1 is not supported (only 0.0)"),
    ({"use_mrope": True}, "use_mrope=True is not supported"),
    ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, "key 'quantization_config' is not implemented"),
    ({"norm_type": "layer_norm"}, "key 'norm_type' is not implemented"),  # a minigpt key on a llama config
    ({"logit_scale": 0.5}, "key 'logit_scale' is not implemented"),
])
def test_a_key_the_decoder_does_not_implement_is_refused_by_name(tiny_dir, tmp_path, change, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        jaxft.load_pretrained(_with(tiny_dir("llama"), tmp_path, **change))


def test_harmless_and_neutral_keys_load_and_change_nothing(tiny_dir, tmp_path):
    cfg, params = jaxft.load_pretrained(tiny_dir("llama"))
    reference = np.asarray(jaxft.logits(cfg, params, IDS))
    harmless = {"architectures": ["LlamaForCausalLM"], "torch_dtype": "bfloat16", "use_cache": False,
                "output_hidden_states": True, "max_window_layers": 1, "attention_dropout": 0.0, "use_mrope": False,
                "some_future_key": None}
    cfg2, params2 = jaxft.load_pretrained(_with(tiny_dir("llama"), tmp_path, **harmless))
    assert cfg2 == cfg
    np.testing.assert_array_equal(np.asarray(jaxft.logits(cfg2, params2, IDS)), reference)


def test_the_readme_names_every_accepted_key_that_is_not_read():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("**Every supported config key is honoured")[1].split("\n- **")[0]
    named = set(re.findall(r"`([a-z_0-9]+)`", section))
    accepted = set(hf_keys.HARMLESS) | set(hf_keys.NEUTRAL)
    assert accepted <= named, sorted(accepted - named)
