"""Reference semantics: a ``modules.pt`` written by torch in the reference's format (with its PEFT LoRA)
imports into the reference projector; the seed preset's optimizer groups have the reference's rates
and decay; old condense keys are refused with their new names."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxft.recipes.condense import model as model_lib
from jaxft.recipes.condense.reference import import_reference
from tests.configs import recipe_config
from tests.recipes.condense.helpers import N, tiny_condenser


def write_reference(directory, h_enc, h_dec, n, seed=0):
    """What the reference trainer saves: checkpoints/modules.pt (torch.save) and a PEFT adapter at the root."""
    import peft
    import torch
    import transformers

    torch.manual_seed(seed)
    linear = torch.nn.Linear(2 * h_enc, h_dec)
    norm = torch.nn.LayerNorm(2 * h_enc)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    modules = {"modules": {"pre_condensed_tokens": torch.randn(1, n, h_enc),
                           "linear_state_dict": linear.state_dict(), "norm_state_dict": norm.state_dict()}}
    (directory / "checkpoints").mkdir(parents=True)
    torch.save(modules, directory / "checkpoints" / "modules.pt")
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=16, hidden_size=h_enc, intermediate_size=2 * h_enc, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2))
    lora = peft.get_peft_model(llama, peft.LoraConfig(
        r=8, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"], init_lora_weights=False))
    lora.save_pretrained(directory)
    return modules["modules"], linear, norm, lora


def test_modules_pt_import(tmp_path):
    import torch

    model, trainable, frozen = tiny_condenser("reference")
    h_enc, h_dec = model.encoder.hidden_size, model.decoder.hidden_size
    modules, linear, norm, lora = write_reference(tmp_path, h_enc, h_dec, N)
    imported = import_reference(tmp_path, model, trainable)
    np.testing.assert_array_equal(imported["condense_tokens"], modules["pre_condensed_tokens"][0].numpy())
    x = np.random.RandomState(0).normal(size=(3, 2 * h_enc)).astype(np.float32)
    ours = model_lib.project(model, imported["projector"], jnp.asarray(x))
    with torch.no_grad():
        expected = linear(norm(torch.tensor(x))).numpy()
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-5, atol=1e-5)
    # The PEFT adapter replaces the LoRA: lora_B of layer 1's v_proj, transposed into the kernel layout.
    b = lora.base_model.model.model.layers[1].self_attn.v_proj.lora_B["default"].weight.detach().numpy()
    v = imported["lora"]["model"]["layers"]["self_attn"]["v_proj"]
    np.testing.assert_allclose(np.asarray(v["b"][1]), b.T, rtol=1e-6)
    np.testing.assert_array_equal(imported["markers"]["ae"], trainable["markers"]["ae"])  # kept


def test_modules_pt_refusals(tmp_path):
    import torch

    model, trainable, _ = tiny_condenser("reference")
    h_enc = model.encoder.hidden_size
    bad = tmp_path / "bad.pt"
    torch.save({"modules": {"pre_condensed_tokens": torch.zeros(1, N + 1, h_enc),
                            "linear_state_dict": {"weight": torch.zeros(3, 3), "bias": torch.zeros(3)},
                            "norm_state_dict": {"weight": torch.zeros(3), "bias": torch.zeros(3)}}}, bad)
    with pytest.raises(ValueError, match=r"bad.pt: 'pre_condensed_tokens' has shape \(1, 3, 64\)"):
        import_reference(bad, model, trainable)
    # Anything beyond plain tensors and containers is refused by torch.load(weights_only=True).
    pickled = tmp_path / "pickled.pt"
    torch.save({"modules": {"pre_condensed_tokens": np.zeros(3, dtype=object)}}, pickled)
    with pytest.raises(ValueError, match="not a readable torch file with plain tensors"):
        import_reference(pickled, model, trainable)
    with pytest.raises(FileNotFoundError, match="no modules.pt there"):
        import_reference(tmp_path / "nowhere", model, trainable)
    linear_model, linear_trainable, _ = tiny_condenser("linear_norm")
    with pytest.raises(ValueError, match="condense.projector=reference"):
        import_reference(bad, linear_model, linear_trainable)


def _lr_and_decay(config, no_decay):
    """Per leaf: (learning rate, weight decay) of the first update, as the built optimizer applies them."""
    from jaxft.recipes.condense.recipe import group_fn
    from jaxft.train.optim import make_optimizer

    tree = {"condense_tokens": jnp.zeros((2, 4)), "markers": {"ae": jnp.zeros((4,))},
            "projector": {"linear": {"kernel": jnp.zeros((8, 4)), "bias": jnp.zeros((4,))},
                          "norm": {"scale": jnp.zeros((8,)), "bias": jnp.zeros((8,))}},
            "lora": {"q_proj": {"a": jnp.zeros((4, 2)), "b": jnp.zeros((2, 4))}}}
    opt = make_optimizer(config.optim, tree, group_fn, no_decay)
    # Gradient ones at params zero: Adam's first step is -lr per leaf (clipping rescales, Adam normalises).
    lr, _ = opt.update(jax.tree.map(jnp.ones_like, tree), opt.init(tree), tree)
    # Gradient zero at params one: only the decoupled weight decay moves, by -lr * wd.
    ones = jax.tree.map(jnp.ones_like, tree)
    wd, _ = opt.update(jax.tree.map(jnp.zeros_like, tree), opt.init(ones), ones)
    flat = lambda t: {jax.tree_util.keystr(p): float(-np.asarray(v).ravel()[0])  # noqa: E731
                      for p, v in jax.tree_util.tree_leaves_with_path(t)}
    lrs, decays = flat(lr), flat(wd)
    return {k: (lrs[k], decays[k] / lrs[k]) for k in lrs}


def test_seed_optimizer_groups_follow_the_reference():
    from jaxft.recipes.condense.recipe import make_no_decay

    config = recipe_config("condense", "seed")
    assert config.optim.schedule.name == "constant" and config.optim.schedule.warmup_steps == 0
    got = _lr_and_decay(config, make_no_decay(bool(config.condense.decay_all)))
    for key, (lr, wd) in got.items():
        expected = 1e-5 if "condense_tokens" in key else 1e-4
        assert lr == pytest.approx(expected, rel=1e-6), key
        assert wd == pytest.approx(1e-5, rel=1e-3), key  # torch AdamW decays every parameter
    # The other rule (decay_all=False): learned embeddings, biases and norms get none.
    demo = recipe_config("condense", "demo")
    demo.optim.schedule.warmup_steps, demo.optim.weight_decay = 0, 0.01
    got = _lr_and_decay(demo, make_no_decay(bool(demo.condense.decay_all)))
    decayed = {key for key, (_, wd) in got.items() if wd > 0}
    assert decayed == {"['lora']['q_proj']['a']", "['lora']['q_proj']['b']", "['projector']['linear']['kernel']"}
    assert all(wd == pytest.approx(0.01, rel=1e-3) for key, (_, wd) in got.items() if key in decayed)


def test_seed_preset_and_renamed_keys():
    from jaxft.config import unknown_key_message

    config = recipe_config("condense", "seed")
    assert config.encoder.path == "meta-llama/Llama-3.2-1B"
    assert config.decoder.path == "mistralai/Mistral-7B-Instruct-v0.2"
    assert (config.lora.rank, config.lora.alpha, config.condense.projector) == (128, 128.0, "reference")
    assert config.train.early_stopping.metric == "loss" and config.export.source == "best"
    # R1 (condense-trainer 0778111): the instruction objective alone on its benchmark, batch 1, 10 epochs,
    # condense tokens after the padded 4096-token context, its groups' constant rates
    k = config.condense
    assert config.data.hf_dataset == "Condense-AI/benchmark-condense-v0.1" and config.data.validation_fraction == 0.1
    assert dict(k.objectives) == {"ae": 0.0, "continuation": 0.0, "instruction": 1.0} and k.min_characters == 0
    assert (k.instruction.context_column, k.instruction.prompt_column, k.instruction.completion_column) == (
        "context", "activation_prompt", "expected_completion")
    assert k.instruction.max_prompt_tokens + k.instruction.max_completion_tokens == 4096
    assert (k.max_tokens, k.compression_ratio, k.num_segments, k.positions) == (4096, 8.0, 1, "after_padding")
    assert (config.train.batch_size, config.train.epochs, config.train.eval_every, config.train.eval_batches) == (
        1, 10.0, 500, 100)
    assert {g: config.optim.groups[g].lr for g in ("condense_tokens", "projector", "lora")} == {
        "condense_tokens": 1e-5, "projector": 1e-4, "lora": 1e-4}
    assert config.optim.schedule.name == "constant" and config.optim.weight_decay == 1e-5 and k.decay_all
    for old, new in (("condense.encoder", "encoder.path"), ("condense.decoder_tokenizer", "decoder.tokenizer"),
                     ("condense.quantize_encoder", "encoder.quantize"), ("condense.lora.rank", "lora.rank"),
                     ("condense.data.hf_dataset", "data.hf_dataset"), ("condense.encoder_init", "encoder.random_init"),
                     ("condense.continuation_weight", "condense.objectives.continuation")):
        assert unknown_key_message(config, old, "configs/condense.py") == f"config key '{old}' was replaced by {new}"
