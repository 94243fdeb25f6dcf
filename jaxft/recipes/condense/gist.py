"""The reference's single-model gist design (``condenses/condense-trainer`` at 4c5c879, Jan 2025).

One LLM is both the compressor (with LoRA) and the frozen target (the same weights without it). A
text of ``max_tokens`` tokens is cut into spans of ``span_length`` tokens; spans of padding only are
dropped. Each span is followed by ``n`` learned gist tokens and run through the LoRA'd LLM with
positions ``0..L-1`` for the span and ``0, r, 2r, ..`` (``r = L / n``) for the gist slots
(``compress/modeling/causal_lm.py`` ``GistCausalLM``); the final normed hidden state
(``hidden_states[-1]``) at the gist slots is the span's gist, fed to the target as it is (no projector).

* Auto-encoding, per span (``objectives/auto_encoding.py``): ``[gist of the span][AE flags][span tokens]``
  at positions ``[0, r, ..][0 ..][1..L]``; every real span token is scored (the last flag predicts the
  first). The objective is the mean over spans of each span's mean token loss.
* Completing, level ``i`` = 1..S-1 (``objectives/completing.py``): ``[gists of spans 0..i-1][LM flags]
  [tokens of spans i..S-1]`` at positions ``0, 1, 2, ..``; every real token after the flags is scored.
  The objective is the mean over levels of each level's mean token loss.

The loss of a text is ``w_ae * AE + w_lm * completing`` (the reference sums both, weights 1), its
mean over texts the batch loss -- the reference's at its batch size 1. Padding is masked by length.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxft.models.config import DecoderConfig
from jaxft.models.decoder import embed, forward, lm_head_weight
from jaxft.recipes.condense.objectives import inverse_count
from jaxft.train.loss import LossOutput, causal_lm_loss

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class GistLayout:
    """Static shapes: ``max_tokens`` tokens per text in spans of ``span_length``, ``num_gist_tokens`` each."""

    span_length: int  # L (the reference's model_config.max_length)
    num_gist_tokens: int  # n
    max_tokens: int  # T (the reference's data_config.max_length): tokens per text, in T / L spans
    num_flags: int = 1  # F: AE flags and LM flags (the reference's num_auto_encoding_flag = num_complete_flag)

    def __post_init__(self):
        n, length, total = self.num_gist_tokens, self.span_length, self.max_tokens
        # The reference's own checks (GistCausalLM.__init__), plus whole spans per text.
        if n <= 0 or n % 2 or length % 2 or length % n:
            raise ValueError(f"config key 'condense.gist': gist_tokens={n} must be positive and even, span_tokens="
                             f"{length} even and a multiple of it")
        if total <= 0 or total % length or self.num_flags < 1:
            raise ValueError(f"config key 'condense.gist.max_tokens'={total} must be a positive multiple of "
                             f"span_tokens={length} (and num_flags >= 1)")

    @property
    def max_spans(self) -> int:
        return self.max_tokens // self.span_length

    @property
    def stride(self) -> int:
        return self.span_length // self.num_gist_tokens


@dataclasses.dataclass(frozen=True)
class GistModel:
    """One LLM, its LoRA config and the layout; the compute dtype and the remat policy (of the LLM as
    compressor and as target: the loss backpropagates through both)."""

    llm: DecoderConfig
    layout: GistLayout
    lora_config: Any
    dtype: Any = jnp.float32
    remat: str = "none"


# -- the layout (numpy: shared by the device code and the tests) -----------------------------------

def encoder_positions(layout: GistLayout) -> np.ndarray:
    """[L + n]: the span at 0..L-1, gist token j at j * r."""
    return np.concatenate([np.arange(layout.span_length), np.arange(0, layout.span_length, layout.stride)])


def ae_positions(layout: GistLayout) -> np.ndarray:
    """[n + F + L - 1]: the AE row's positions (the last span token predicts nothing, so it is not read)."""
    gist = np.arange(0, layout.span_length, layout.stride)
    return np.concatenate([gist, np.zeros(layout.num_flags, np.int64), np.arange(1, layout.span_length)])


def level_width(layout: GistLayout, level: int) -> tuple[int, int]:
    """(prefix slots, target tokens) of completing level ``level``."""
    return level * layout.num_gist_tokens + layout.num_flags, (layout.max_spans - level) * layout.span_length


def span_example(ids: list[int], layout: GistLayout) -> dict[str, np.ndarray]:
    """A text's token ids (already cut to ``max_tokens``) as spans: ``ids`` [S, L] and ``mask`` [S, L]."""
    ids = np.asarray(ids[: layout.max_tokens], np.int32)
    mask = np.zeros(layout.max_tokens, bool)
    mask[: len(ids)] = True
    padded = np.zeros(layout.max_tokens, np.int32)
    padded[: len(ids)] = ids
    shape = (layout.max_spans, layout.span_length)
    return {"ids": padded.reshape(shape), "mask": mask.reshape(shape)}


# -- device side ---------------------------------------------------------------------------------

def encoder_params(model: GistModel, trainable: Params, frozen: Params, rng: jax.Array | None = None) -> Params:
    from jaxft.lora import LoRA, apply

    return apply(frozen["llm"], LoRA(trainable["lora"], model.lora_config), rng=rng)


def gist_features(model: GistModel, trainable: Params, params: Params, ids: jnp.ndarray,
                  mask: jnp.ndarray) -> jnp.ndarray:
    """[B, S, n, H]: the LoRA'd LLM's final normed hidden states at each span's gist slots."""
    layout, cfg = model.layout, model.llm
    b, s, length = ids.shape
    n = layout.num_gist_tokens
    tokens = embed(cfg, params, ids.reshape(b * s, length), model.dtype)
    gist = jnp.broadcast_to(trainable["gist_tokens"].astype(model.dtype), (b * s, n, cfg.hidden_size))
    full_mask = jnp.concatenate([mask.reshape(b * s, length).astype(bool), jnp.ones((b * s, n), bool)], axis=1)
    positions = jnp.broadcast_to(jnp.asarray(encoder_positions(layout), jnp.int32), (b * s, length + n))
    hidden, _ = forward(cfg, params, attention_mask=full_mask, position_ids=positions,
                        inputs_embeds=jnp.concatenate([tokens, gist], axis=1), remat=model.remat, output="hidden",
                        dtype=model.dtype)
    return hidden[:, length:].reshape(b, s, n, cfg.hidden_size)


@functools.partial(jax.jit, static_argnums=0)
def gist_features_jit(model: GistModel, trainable: Params, frozen: Params, ids, mask) -> jnp.ndarray:
    """``gist_features`` of the LoRA'd LLM compiled once per model and shape (no dropout), for samples."""
    return gist_features(model, trainable, encoder_params(model, trainable, frozen), ids, mask)


def _score(model: GistModel, params: Params, prefix, flags, targets, target_mask, positions, weights,
           chunk_size) -> LossOutput:
    """``[prefix][flags][targets[:-1]]`` through the frozen LLM; the last flag and each target token
    predict the next target (the reference's shifted labels, prefix and flags at -100)."""
    cfg, rows = model.llm, prefix.shape[0]
    flags = jnp.broadcast_to(flags.astype(model.dtype), (rows,) + flags.shape)
    tokens = embed(cfg, params, targets[:, :-1], model.dtype)
    embeds = jnp.concatenate([prefix.astype(model.dtype), flags, tokens], axis=1)
    first = prefix.shape[1] + flags.shape[1] - 1
    mask = jnp.concatenate([jnp.ones((rows, first + 1), bool), target_mask[:, :-1]], axis=1)
    hidden, _ = forward(cfg, params, attention_mask=mask, position_ids=jnp.broadcast_to(positions, mask.shape),
                        inputs_embeds=embeds, remat=model.remat, output="hidden", dtype=model.dtype)
    head = lm_head_weight(cfg, params, model.dtype)
    return causal_lm_loss(hidden[:, first:], head, targets, target_mask, weights, chunk_size=chunk_size)


def ae_objective(model: GistModel, params: Params, gists, flags, ids, mask, chunk_size=None) -> LossOutput:
    """AE sums over spans; ``loss_sum`` adds each text's mean over its spans of the span's mean token loss."""
    b, s, n, h = gists.shape
    length = model.layout.span_length
    mask = mask.astype(bool)
    counts = mask.sum(-1).astype(jnp.float32)  # [b, s]
    spans = (counts > 0).sum(-1, keepdims=True).astype(jnp.float32)
    weights = jnp.broadcast_to((inverse_count(counts) * inverse_count(spans))[..., None], mask.shape)
    positions = jnp.asarray(ae_positions(model.layout), jnp.int32)
    return _score(model, params, gists.reshape(b * s, n, h), flags, ids.reshape(b * s, length),
                  mask.reshape(b * s, length), positions, weights.reshape(b * s, length), chunk_size)


def completing_objective(model: GistModel, params: Params, gists, flags, ids, mask, chunk_size=None) -> LossOutput:
    """Completing sums over levels 1..S-1 (one decoder call per level, each of its own width)."""
    b, s, n, h = gists.shape
    mask = mask.astype(bool)
    spans = mask.any(-1).sum(-1).astype(jnp.float32)  # [b]
    total = LossOutput(*(jnp.zeros((), jnp.float32) for _ in LossOutput._fields))
    for level in range(1, s):
        prefix_slots, width = level_width(model.layout, level)
        targets, target_mask = ids[:, level:].reshape(b, width), mask[:, level:].reshape(b, width)
        counts = target_mask.sum(-1, keepdims=True).astype(jnp.float32)
        weights = jnp.broadcast_to(inverse_count(counts) * inverse_count(spans - 1)[:, None], target_mask.shape)
        positions = jnp.arange(prefix_slots + width - 1, dtype=jnp.int32)
        out = _score(model, params, gists[:, :level].reshape(b, level * n, h), flags, targets, target_mask,
                     positions, weights, chunk_size)
        total = jax.tree.map(jnp.add, total, out)
    return total


def gist_loss(model: GistModel, trainable: Params, frozen: Params, batch: dict, rng: jax.Array | None, *,
              weights: dict[str, float], chunk_size: int | None = None):
    """``(loss_sum, texts, metric_sums)`` per the ``TrainTask`` contract."""
    params = frozen["llm"]
    gists = gist_features(model, trainable, encoder_params(model, trainable, frozen, rng), batch["ids"],
                          batch["mask"])
    texts = jnp.asarray(batch["mask"]).any((-1, -2)).sum().astype(jnp.float32)
    loss_sum, metrics = jnp.zeros((), jnp.float32), {}
    for name, weight, objective, flags in (("ae", weights["ae"], ae_objective, trainable["flags"]["ae"]),
                                          ("lm", weights["continuation"], completing_objective,
                                           trainable["flags"]["lm"])):
        if not weight:
            continue
        out = objective(model, params, gists, flags, batch["ids"], batch["mask"], chunk_size)
        loss_sum = loss_sum + weight * out.loss_sum
        metrics.update({f"{name}_loss": out.loss_sum, f"{name}_loss_count": texts, f"{name}_correct": out.correct,
                        f"{name}_correct_count": out.count})
    return loss_sum, texts, metrics


def init_params(rng: jax.Array, model: GistModel) -> Params:
    """Gist tokens and flags from a standard normal, as the reference's ``torch.randn``."""
    k_gist, k_ae, k_lm = jax.random.split(rng, 3)
    h, f = model.llm.hidden_size, model.layout.num_flags
    return {"gist_tokens": jax.random.normal(k_gist, (model.layout.num_gist_tokens, h), jnp.float32),
            "flags": {"ae": jax.random.normal(k_ae, (f, h), jnp.float32),
                      "lm": jax.random.normal(k_lm, (f, h), jnp.float32)}}
