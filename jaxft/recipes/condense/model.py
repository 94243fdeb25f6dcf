"""The condenser: encoder LLM + condense tokens + projector, and decoder input assembly.

Each context segment of ``L`` encoder tokens is followed by ``n`` learned
condense tokens and run through the encoder (LoRA-adapted) as
``inputs_embeds``; the final hidden states at the condense slots are the
segment's condensed states. A projector maps them to the decoder's embedding
size, where they replace token embeddings. The default projector follows the
reference trainer: LayerNorm over the concatenation of the encoder's last two
hidden states at the condense slots (transformers' ``hidden_states[-2:]``: the
input to the last layer and the final normed output), then a linear map
(``projector="reference"``); ``projector="linear_norm"`` maps the final hidden
state linearly, then applies LayerNorm.

Condense token positions (``positions``): with ``"spread"`` (the default) token
``j`` (0-based) of a segment holding ``len`` real tokens sits at position
``ceil((j + 1) * len / n) - 1``, i.e. on the position of the last token of the
``j``-th of ``n`` equal slices of the segment. So the tokens spread evenly over
the segment's positions, the last one shares the segment's last position, and
under RoPE each condense token is nearest to the slice that ends at its position
(it still attends to the whole segment: causality goes by slot, and the condense
slots follow every token slot). With ``"after_padding"`` token ``j`` sits at
``L + j`` after the segment's ``L`` padded slots, whatever ``len`` is: what the
reference's R1 trainer gets from transformers, which numbers the slots of the
padded row ``[context padded to L][n condense tokens]`` 0..L+n-1 when given no
position ids (4096..4607 for its 4096-token context and 512 tokens).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxft.models.config import DecoderConfig
from jaxft.models.decoder import embed, forward

Params = dict[str, Any]
PROJECTORS = ("reference", "linear_norm")
POSITIONS = ("spread", "after_padding")


@dataclasses.dataclass(frozen=True)
class CondenseModel:
    """Everything static about the condenser (configs, sizes, dtypes)."""

    encoder: DecoderConfig
    decoder: DecoderConfig
    num_condense_tokens: int
    segment_length: int
    dtype: Any = jnp.float32  # compute dtype of both LLMs
    remat: str = "none"  # the encoder's remat policy
    decoder_remat: str = "none"
    decoder_remat_group: int = 1  # > 1: the decoder's layers also checkpointed in groups of this many
    train_decoder: bool = False  # demo-only: the decoder's weights train too
    lora_config: Any = None  # jaxft.lora.LoraConfig of the encoder adapters; None: no adapters
    projector: str = "reference"  # one of PROJECTORS
    positions: str = "spread"  # one of POSITIONS: where the condense tokens sit (see the module docstring)

    def __post_init__(self):
        if self.positions not in POSITIONS:
            raise ValueError(f"config key 'condense.positions'={self.positions!r}: expected one of "
                             f"{', '.join(POSITIONS)}")
        if self.projector not in PROJECTORS:
            raise ValueError(f"config key 'condense.projector'={self.projector!r}: expected one of "
                             f"{', '.join(PROJECTORS)}")
        if self.projector == "reference" and (self.encoder.parallel_residual
                                              or self.encoder.position_embedding == "sinusoidal"):
            raise ValueError("condense.projector=reference reads the input to the encoder's last layer, which "
                             "needs a Llama-family encoder (sequential blocks, rotary positions)")

    @property
    def projector_module(self) -> Projector:
        return Projector(features=self.decoder.hidden_size, kind=self.projector)

    def decoder_params(self, trainable: Params, frozen: Params) -> Params:
        return trainable["decoder"] if self.train_decoder else frozen["decoder"]

    def encoder_params(self, trainable: Params, frozen: Params, rng: jax.Array | None = None) -> Params:
        """The frozen encoder with the trainable LoRA factors applied (dropout only with ``rng``)."""
        if self.lora_config is None:
            return frozen["encoder"]
        from jaxft.lora import LoRA, apply

        return apply(frozen["encoder"], LoRA(trainable["lora"], self.lora_config), rng=rng)


def condense_position_ids(lengths: jnp.ndarray, segment_length: int, num_condense_tokens: int,
                          positions: str = "spread") -> jnp.ndarray:
    """Position ids [..., L + n]: tokens at 0..L-1; condense token j at ceil((j+1)·len/n) - 1 (``"spread"``)
    or at L + j (``"after_padding"``).

    ``lengths`` [...] counts each segment's real tokens (padding sits at the end);
    with ``"spread"`` an empty segment puts every condense token at 0.
    """
    n = num_condense_tokens
    lengths = jnp.asarray(lengths, jnp.int32)[..., None]
    j = jnp.arange(n, dtype=jnp.int32)
    if positions == "after_padding":
        condense = jnp.broadcast_to(segment_length + j, lengths.shape[:-1] + (n,))
    else:
        condense = jnp.maximum((((j + 1) * lengths) + n - 1) // n - 1, 0)
    tokens = jnp.broadcast_to(jnp.arange(segment_length, dtype=jnp.int32), lengths.shape[:-1] + (segment_length,))
    return jnp.concatenate([tokens, condense], axis=-1)


class Projector(nn.Module):
    """Encoder hidden states -> decoder input embeddings, in float32 (params float32).

    ``kind="reference"``: ``linear(LayerNorm(concat(h_last_input, h_final)))`` -- the input
    holds both states on its last axis ([..., 2 * H_enc]); ``kind="linear_norm"``:
    ``LayerNorm(linear(h_final))`` ([..., H_enc] in). Linear: Xavier-uniform kernel, zero
    bias; LayerNorm: torch's eps 1e-5 and two-pass variance.
    """

    features: int
    kind: str = "reference"

    @nn.compact
    def __call__(self, states: jnp.ndarray) -> jnp.ndarray:
        x = states.astype(jnp.float32)
        linear = nn.Dense(self.features, kernel_init=nn.initializers.xavier_uniform(), name="linear",
                          precision=jax.lax.Precision.HIGHEST)
        if self.kind == "reference":
            return linear(nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name="norm")(x))
        return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name="norm")(linear(x))


def projector_input_size(model: CondenseModel) -> int:
    return model.encoder.hidden_size * (2 if model.projector == "reference" else 1)


def init_params(rng: jax.Array, model: CondenseModel, decoder_embed_std: float = 0.02) -> Params:
    """Condense tokens (Xavier-uniform), projector (see ``Projector``) and markers.

    Markers start at the decoder embedding table's scale so they look like
    ordinary inputs to the frozen decoder.
    """
    n, h_enc, h_dec = model.num_condense_tokens, model.encoder.hidden_size, model.decoder.hidden_size
    k_tok, k_proj, k_ae, k_cont = jax.random.split(rng, 4)
    xavier = jax.nn.initializers.xavier_uniform()
    projector = model.projector_module.init(k_proj, jnp.zeros((1, projector_input_size(model)), jnp.float32))
    return {
        "condense_tokens": xavier(k_tok, (n, h_enc), jnp.float32),
        "projector": projector["params"],
        "markers": {
            "ae": decoder_embed_std * jax.random.normal(k_ae, (h_dec,), jnp.float32),
            "cont": decoder_embed_std * jax.random.normal(k_cont, (h_dec,), jnp.float32),
        },
    }


def encode_segments(model: CondenseModel, trainable: Params, encoder_params: Params, enc_ids: jnp.ndarray,
                    enc_mask: jnp.ndarray) -> jnp.ndarray:
    """Encoder states [B, S, n, H] at the condense slots of segments ``enc_ids`` [B, S, L]; H is
    2 * H_enc for the reference projector (the last two hidden states), else H_enc."""
    b, s, seg_len = enc_ids.shape
    if seg_len != model.segment_length:
        raise ValueError(f"condense: segments have {seg_len} tokens, the model expects {model.segment_length}")
    n, cfg = model.num_condense_tokens, model.encoder
    ids = enc_ids.reshape(b * s, seg_len)
    mask = enc_mask.reshape(b * s, seg_len).astype(bool)
    tokens = embed(cfg, encoder_params, ids, model.dtype)
    condense = jnp.broadcast_to(trainable["condense_tokens"].astype(model.dtype), (b * s, n, cfg.hidden_size))
    x = jnp.concatenate([tokens, condense], axis=1)
    # Condense slots stay valid even in empty segments, so no query row is all-masked;
    # the objectives drop those segments' states.
    full_mask = jnp.concatenate([mask, jnp.ones((b * s, n), bool)], axis=1)
    positions = condense_position_ids(mask.sum(-1), seg_len, n, model.positions)
    # The reference projector reads transformers' hidden_states[-2:]: the input to the last layer and the
    # final normed output.
    kept = (-2, -1) if model.projector == "reference" else (-1,)
    _, _, states = forward(cfg, encoder_params, attention_mask=full_mask, position_ids=positions, inputs_embeds=x,
                           remat=model.remat, output="hidden", dtype=model.dtype, hidden_states=kept)
    hidden = jnp.concatenate([state[:, seg_len:] for state in states], axis=-1)
    return hidden.reshape(b, s, n, hidden.shape[-1])


def project(model: CondenseModel, projector: Params, states: jnp.ndarray) -> jnp.ndarray:
    """Encoder states -> decoder embeddings (float32 maths, the model's compute dtype out)."""
    return model.projector_module.apply({"params": projector}, states).astype(model.dtype)


def condense(model: CondenseModel, trainable: Params, frozen: Params, enc_ids: jnp.ndarray, enc_mask: jnp.ndarray,
             rng: jax.Array | None = None) -> jnp.ndarray:
    """Projected condensed states [B, S, n, H_dec] in the compute dtype."""
    encoder_params = model.encoder_params(trainable, frozen, rng)
    states = encode_segments(model, trainable, encoder_params, enc_ids, enc_mask)
    return project(model, trainable["projector"], states)


@functools.partial(jax.jit, static_argnums=0)
def condense_jit(model: CondenseModel, trainable: Params, frozen: Params, enc_ids: jnp.ndarray,
                 enc_mask: jnp.ndarray) -> jnp.ndarray:
    """``condense`` compiled once per model and shape (no dropout), for inference and samples."""
    return condense(model, trainable, frozen, enc_ids, enc_mask)


def decoder_inputs(prefix: jnp.ndarray, prefix_mask: jnp.ndarray, marker: jnp.ndarray, tokens: jnp.ndarray,
                   token_mask: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``[prefix][marker][tokens]`` as decoder ``inputs_embeds`` [R, P + 1 + T, H] and its mask.

    Masked prefix slots may sit anywhere: the decoder's positions count only
    valid slots, so a gap between the condensed states and the marker changes
    nothing but wasted compute.
    """
    r = prefix.shape[0]
    marker = jnp.broadcast_to(marker.astype(prefix.dtype), (r, 1, prefix.shape[-1]))
    embeds = jnp.concatenate([prefix, marker, tokens.astype(prefix.dtype)], axis=1)
    mask = jnp.concatenate([prefix_mask.astype(bool), jnp.ones((r, 1), bool), token_mask.astype(bool)], axis=1)
    return embeds, mask


def segment_valid(enc_mask: jnp.ndarray) -> jnp.ndarray:
    """[B, S] bool: the segment holds at least one real token."""
    return enc_mask.astype(bool).any(axis=-1)
