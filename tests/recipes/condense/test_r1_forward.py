"""An imported R1 condenser gives the states R1's own code gives: a torch transcription of the reference's
forward at 0778111 (inference.py ``Condenser._condense_context`` / condense_core.py ``forward``: the
context padded to max_length, the condense tokens after it, the LoRA'd encoder run with no position
ids, ``hidden_states[-2:]`` at the condense slots, ``linear(norm(.))``; then the decoder reads
``[states][prompt]``) on the same tiny random weights, float32, within 1e-4."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from tests.configs import recipe_config
from tests.recipes.condense.test_reference_formats import write_format

ENC_VOCAB, DEC_VOCAB, L, N = 64, 80, 16, 4
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _reference_repo(directory):
    """A hub repo as R1 pushes it: the encoder's PEFT adapter at the root, checkpoints/modules.pt."""
    import peft
    import torch
    import transformers

    torch.manual_seed(0)
    encoder = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=ENC_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2))
    decoder = transformers.MistralForCausalLM(transformers.MistralConfig(
        vocab_size=DEC_VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, sliding_window=None, initializer_range=0.2))
    encoder.save_pretrained(directory / "encoder")
    decoder.save_pretrained(directory / "decoder")
    lora = peft.get_peft_model(encoder, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS,
                                                        init_lora_weights=False))
    lora.save_pretrained(directory / "repo")
    modules = write_format(directory / "repo" / "checkpoints" / "modules.pt", "r1", N, 32, 48)["modules"]
    return lora.eval(), decoder.eval(), modules


def _r1_states(encoder, modules, context_ids, attention_mask):
    """Condenser._condense_context, transcribed (float32 instead of its bfloat16)."""
    import torch

    norm, linear = torch.nn.LayerNorm(2 * 32), torch.nn.Linear(2 * 32, 48)
    norm.load_state_dict(modules["norm_state_dict"])
    linear.load_state_dict(modules["linear_state_dict"])
    tokens = modules["pre_condensed_tokens"]
    embeds = torch.cat([encoder.get_input_embeddings()(context_ids), tokens], dim=1)
    mask = torch.cat([attention_mask, torch.ones(attention_mask.shape[0], N, dtype=attention_mask.dtype)], dim=1)
    out = encoder(inputs_embeds=embeds, output_hidden_states=True, attention_mask=mask)
    hidden = torch.cat(out.hidden_states[-2:], dim=-1)[:, -N:, :]
    return linear(norm(hidden))


def test_imported_r1_condenser_equals_the_reference_forward(tmp_path):
    import torch

    from jaxft import lora as lora_lib
    from jaxft.checkpoint.hf import load_pretrained
    from jaxft.models.decoder import embed, forward
    from jaxft.recipes.condense import model as model_lib
    from jaxft.recipes.condense.reference import import_reference

    encoder, decoder, modules = _reference_repo(tmp_path)
    enc_cfg, enc_params = load_pretrained(tmp_path / "encoder", dtype=jnp.float32)
    dec_cfg, dec_params = load_pretrained(tmp_path / "decoder", dtype=jnp.float32)
    positions = str(recipe_config("condense", "seed").condense.positions)  # the seed preset's: R1's
    assert positions == "after_padding"
    model = model_lib.CondenseModel(encoder=enc_cfg, decoder=dec_cfg, num_condense_tokens=N, segment_length=L,
                                    lora_config=lora_lib.LoraConfig(rank=8, alpha=16.0, targets=tuple(TARGETS)),
                                    projector="reference", positions=positions)
    adapters = lora_lib.init(jax.random.key(0), enc_cfg, enc_params, rank=8, alpha=16.0, targets=tuple(TARGETS))
    trainable = import_reference(tmp_path / "repo", model,
                                 {"lora": adapters.params, **model_lib.init_params(jax.random.key(1), model)})
    frozen = {"encoder": enc_params, "decoder": dec_params}

    rs = np.random.RandomState(0)
    lengths = (10, L)  # a context R1 pads (with the encoder's pad = EOS id) and one that fills max_length
    ids = np.full((2, L), 2, np.int32)
    for row, length in enumerate(lengths):
        ids[row, :length] = rs.randint(3, ENC_VOCAB, length)
    mask = np.arange(L)[None] < np.asarray(lengths)[:, None]
    ours = model_lib.condense(model, trainable, frozen, jnp.asarray(ids)[:, None], jnp.asarray(mask)[:, None])[:, 0]
    prompt = rs.randint(0, DEC_VOCAB, (2, 5))
    with torch.no_grad():
        for row in range(2):
            want = _r1_states(encoder, modules, torch.tensor(ids[row:row + 1], dtype=torch.long),
                              torch.tensor(mask[row:row + 1], dtype=torch.long))
            np.testing.assert_allclose(np.asarray(ours[row]), want[0].numpy(), rtol=1e-4, atol=1e-4)
            # Condenser.forward/generate: the decoder reads [states][prompt]; its next-token logits agree too.
            p = torch.tensor(prompt[row:row + 1], dtype=torch.long)
            ref_logits = decoder(inputs_embeds=torch.cat([want, decoder.get_input_embeddings()(p)], 1)).logits
            x = jnp.concatenate([ours[row:row + 1], embed(dec_cfg, dec_params, jnp.asarray(prompt[row:row + 1]))], 1)
            logits, _ = forward(dec_cfg, dec_params, inputs_embeds=x)
            np.testing.assert_allclose(np.asarray(logits[0]), ref_logits[0].numpy(), rtol=1e-4, atol=1e-4)
    # jaxft's spread layout is not R1's: the padded row's states differ.
    spread = dataclasses.replace(model, positions="spread")
    other = model_lib.condense(spread, trainable, frozen, jnp.asarray(ids)[:, None], jnp.asarray(mask)[:, None])
    assert np.abs(np.asarray(other[0, 0]) - np.asarray(ours[0])).max() > 1e-3
