"""The two condense objectives: auto-encoding and multi-level continuation.

Auto-encoding (AE): the decoder reads ``[condensed states of all segments][AE
marker][context tokens]`` and predicts every context token (the marker
predicts the first one); loss on the context tokens only.

Continuation, level ``i`` = 1..M-1 (M = the text's segments): the decoder
reads the condensed states of segments ``0..i-1``, the continuation marker,
and predicts the decoder tokens of the text from segment ``i`` on, at most
``max_continuation_tokens`` of them. All S-1 possible levels of a batch run as
one padded decoder batch (static shapes: a level a text does not have carries
no loss), so the step compiles once.

Weighting (so the sums the engine adds over micro-batches stay exact): every
text contributes ``ae + continuation_weight * cont`` where ``ae`` is the mean
loss over its context tokens and ``cont`` the mean over its levels of each
level's mean token loss; the loss is the mean of that over texts. The logged
``ae_loss``/``cont_loss`` are the same per-text quantities averaged over texts;
``ae_correct``/``cont_correct`` are token accuracies.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxft.models.decoder import embed, forward, lm_head_weight
from jaxft.recipes.condense.model import CondenseModel, Params, condense, decoder_inputs, segment_valid
from jaxft.train.loss import LossOutput, causal_lm_loss


# -- host side: which decoder tokens each level predicts ---------------------------------------

def continuation_targets(dec_ids: np.ndarray, dec_len: int, segment_starts: np.ndarray, num_segments: int,
                         num_levels: int, max_continuation_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Targets of levels 1..num_levels as ``(ids, mask)`` [num_levels, C]; row r is level r + 1.

    Level i predicts ``dec_ids[segment_starts[i]:][:C]`` (real tokens only).
    Levels the text does not have (i >= num_segments) are all-masked rows.
    """
    c = max_continuation_tokens
    ids = np.zeros((num_levels, c), np.int32)
    mask = np.zeros((num_levels, c), bool)
    for level in range(1, min(num_segments, num_levels + 1)):
        start = int(segment_starts[level])
        stop = min(start + c, dec_len)
        if stop > start:
            ids[level - 1, : stop - start] = dec_ids[start:stop]
            mask[level - 1, : stop - start] = True
    return ids, mask


# -- device side ---------------------------------------------------------------------------------

def _decode_and_score(model: CondenseModel, dec_params: Params, prefix, prefix_mask, marker, target_ids,
                      target_mask, weights, chunk_size: int | None) -> LossOutput:
    """Run ``[prefix][marker][targets[:-1]]`` and score the predictions of ``targets``.

    The marker's output predicts targets[0] and the output at targets[j]
    predicts targets[j + 1], so the last ``T`` outputs line up with the ``T``
    targets without any shift.
    """
    cfg = model.decoder
    tokens = embed(cfg, dec_params, target_ids[:, :-1], model.dtype)
    embeds, mask = decoder_inputs(prefix, prefix_mask, marker, tokens, target_mask[:, :-1])
    hidden, _ = forward(cfg, dec_params, attention_mask=mask, inputs_embeds=embeds, remat=model.remat,
                        output="hidden", dtype=model.dtype)
    hidden = hidden[:, prefix.shape[1]:]
    head = lm_head_weight(cfg, dec_params, model.dtype)
    return causal_lm_loss(hidden, head, target_ids, target_mask, weights, chunk_size=chunk_size)


def _inverse(count: jnp.ndarray) -> jnp.ndarray:
    return jnp.where(count > 0, 1.0 / jnp.maximum(count, 1), 0.0)


def ae_objective(model: CondenseModel, dec_params: Params, states: jnp.ndarray, seg_valid: jnp.ndarray,
                 marker: jnp.ndarray, dec_ids: jnp.ndarray, dec_mask: jnp.ndarray,
                 chunk_size: int | None = None) -> LossOutput:
    """AE sums; ``loss_sum`` adds each text's mean token loss. ``states`` [B, S, n, H]."""
    b, s, n, h = states.shape
    prefix = states.reshape(b, s * n, h)
    prefix_mask = jnp.repeat(seg_valid, n, axis=1)
    counts = dec_mask.astype(jnp.float32).sum(-1, keepdims=True)
    weights = jnp.broadcast_to(_inverse(counts), dec_mask.shape)
    return _decode_and_score(model, dec_params, prefix, prefix_mask, marker, dec_ids, dec_mask, weights, chunk_size)


def level_prefix(states: jnp.ndarray, seg_valid: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Decoder prefixes of levels 1..S-1: [B * (S-1), (S-1) * n, H] and their mask.

    Row ``b * (S-1) + r`` is level r + 1 of text b: the states of segments
    0..S-2 laid out in order, with the slots of segments > r masked.
    """
    b, s, n, h = states.shape
    lv = s - 1
    prefix = jnp.broadcast_to(states[:, None, :lv], (b, lv, lv, n, h)).reshape(b * lv, lv * n, h)
    sees = jnp.arange(lv)[None, :] <= jnp.arange(lv)[:, None]  # [level r, segment]
    mask = sees[None] & seg_valid[:, None, :lv].astype(bool)  # [b, lv, lv]
    return prefix, jnp.repeat(mask, n, axis=2).reshape(b * lv, lv * n)


def continuation_objective(model: CondenseModel, dec_params: Params, states: jnp.ndarray, seg_valid: jnp.ndarray,
                           marker: jnp.ndarray, cont_ids: jnp.ndarray, cont_mask: jnp.ndarray,
                           chunk_size: int | None = None) -> tuple[LossOutput, jnp.ndarray]:
    """Continuation sums (``loss_sum`` adds each text's mean over levels) and texts with a level."""
    b, lv, c = cont_ids.shape
    prefix, prefix_mask = level_prefix(states, seg_valid)
    level_counts = cont_mask.astype(jnp.float32).sum(-1)  # [b, lv]
    levels = (level_counts > 0).sum(-1, keepdims=True).astype(jnp.float32)  # [b, 1]
    weights = jnp.broadcast_to((_inverse(level_counts) * _inverse(levels))[..., None], cont_mask.shape)
    out = _decode_and_score(model, dec_params, prefix, prefix_mask, marker, cont_ids.reshape(b * lv, c),
                            cont_mask.reshape(b * lv, c), weights.reshape(b * lv, c), chunk_size)
    return out, (levels[:, 0] > 0).sum().astype(jnp.float32)


def condense_loss(model: CondenseModel, trainable: Params, frozen: Params, batch: dict, rng: jax.Array | None,
                  *, continuation_weight: float = 1.0, chunk_size: int | None = None
                  ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """``(loss_sum, weight_sum, metric_sums)`` of a batch, per the ``TrainTask`` contract."""
    states = condense(model, trainable, frozen, batch["enc_ids"], batch["enc_mask"], rng)
    valid = segment_valid(batch["enc_mask"])
    dec_params = model.decoder_params(trainable, frozen)
    markers = trainable["markers"]
    ae = ae_objective(model, dec_params, states, valid, markers["ae"], batch["dec_ids"], batch["dec_mask"],
                      chunk_size)
    texts = batch["dec_mask"].astype(bool).any(-1).sum().astype(jnp.float32)
    metrics = {"ae_loss": ae.loss_sum, "ae_loss_count": texts,
               "ae_correct": ae.correct, "ae_correct_count": ae.count}
    loss_sum = ae.loss_sum
    if batch["cont_ids"].shape[1] > 0 and continuation_weight:
        cont, texts_with_levels = continuation_objective(model, dec_params, states, valid, markers["cont"],
                                                         batch["cont_ids"], batch["cont_mask"], chunk_size)
        loss_sum = loss_sum + continuation_weight * cont.loss_sum
        metrics.update({"cont_loss": cont.loss_sum, "cont_loss_count": texts_with_levels,
                        "cont_correct": cont.correct, "cont_correct_count": cont.count})
    return loss_sum, texts, metrics


def make_loss_fn(model: CondenseModel, *, continuation_weight: float, chunk_size: int | None
                 ) -> Callable[..., tuple[jax.Array, jax.Array, dict[str, jax.Array]]]:
    chunk = chunk_size or None  # 0 in the config means "all logits at once"

    def loss_fn(trainable, frozen, batch, rng):
        return condense_loss(model, trainable, frozen, batch, rng, continuation_weight=continuation_weight,
                             chunk_size=chunk)

    return loss_fn
