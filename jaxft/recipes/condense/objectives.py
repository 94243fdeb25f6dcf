"""The condense objectives: auto-encoding, multi-level continuation and instruction.

Auto-encoding (AE): the decoder reads ``[condensed states of all segments][AE
marker][context tokens]`` and predicts every context token (the marker
predicts the first one); loss on the context tokens only.

Continuation, level ``i`` = 1..S (S = segments): the decoder reads the
condensed states of segments ``0..i-1``, the continuation marker, and predicts
the decoder tokens of the text after them -- to its end, or the first
``max_continuation_tokens`` when that cap is set. Level S, after the whole
condensed context, predicts the remainder of the text (the one level of a
single-segment layout). All S levels of a batch run as one padded decoder
batch (static shapes: a level a text does not have carries no loss).

Instruction (records with a context, a prompt and a completion): the decoder
reads ``[condensed context][prompt tokens][completion tokens]`` and is scored
on the completion only (no marker: the prompt says what to do).

Weighting (so the sums the engine adds over micro-batches stay exact): every
text contributes ``w_ae * ae + w_cont * cont + w_ins * ins`` where ``ae`` is the
mean loss over its context tokens, ``cont`` the mean over its levels of each
level's mean token loss and ``ins`` the mean over its completion tokens; the
loss is the mean of that over texts (the total validation loss the best
checkpoint is kept by). The logged ``ae_loss``/``cont_loss``/``ins_loss`` are
the per-text quantities averaged over texts having them; ``*_correct`` are
token accuracies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from jaxft.models.decoder import embed, forward, lm_head_weight
from jaxft.recipes.condense.model import CondenseModel, Params, condense, decoder_inputs, segment_valid
from jaxft.train.loss import LossOutput, causal_lm_loss

OBJECTIVES = ("ae", "continuation", "instruction")


# -- device side ---------------------------------------------------------------------------------

def _decode_and_score(model: CondenseModel, dec_params: Params, prefix, prefix_mask, marker, target_ids,
                      target_mask, weights, chunk_size: int | None, loss_mask=None) -> LossOutput:
    """Run ``[prefix][marker][targets[:-1]]`` and score the predictions of ``targets``.

    The marker's output predicts targets[0] and the output at targets[j]
    predicts targets[j + 1], so the last ``T`` outputs line up with the ``T``
    targets without any shift. With ``marker=None`` the row is ``[prefix][targets[:-1]]``
    and the last prefix slot predicts targets[0] (the instruction objective scores only
    completion tokens, which never come first). ``loss_mask`` (default: ``target_mask``)
    picks the scored targets among the valid ones.
    """
    cfg = model.decoder
    tokens = embed(cfg, dec_params, target_ids[:, :-1], model.dtype)
    if marker is None:
        embeds = jnp.concatenate([prefix, tokens.astype(prefix.dtype)], axis=1)
        mask = jnp.concatenate([prefix_mask.astype(bool), target_mask[:, :-1].astype(bool)], axis=1)
        first = prefix.shape[1] - 1
    else:
        embeds, mask = decoder_inputs(prefix, prefix_mask, marker, tokens, target_mask[:, :-1])
        first = prefix.shape[1]
    hidden, _ = forward(cfg, dec_params, attention_mask=mask, inputs_embeds=embeds, remat=model.decoder_remat,
                        remat_group=model.decoder_remat_group,
                        output="hidden", dtype=model.dtype)
    hidden = hidden[:, first:]
    head = lm_head_weight(cfg, dec_params, model.dtype)
    scored = target_mask if loss_mask is None else loss_mask & target_mask
    return causal_lm_loss(hidden, head, target_ids, scored, weights, chunk_size=chunk_size)


def inverse_count(count: jnp.ndarray) -> jnp.ndarray:
    """1 / count, and 0 where nothing was counted (a text or span with no scored token)."""
    return jnp.where(count > 0, 1.0 / jnp.maximum(count, 1), 0.0)


def ae_objective(model: CondenseModel, dec_params: Params, states: jnp.ndarray, seg_valid: jnp.ndarray,
                 marker: jnp.ndarray, dec_ids: jnp.ndarray, dec_mask: jnp.ndarray,
                 chunk_size: int | None = None) -> LossOutput:
    """AE sums; ``loss_sum`` adds each text's mean token loss. ``states`` [B, S, n, H]."""
    b, s, n, h = states.shape
    prefix = states.reshape(b, s * n, h)
    prefix_mask = jnp.repeat(seg_valid, n, axis=1)
    counts = dec_mask.astype(jnp.float32).sum(-1, keepdims=True)
    weights = jnp.broadcast_to(inverse_count(counts), dec_mask.shape)
    return _decode_and_score(model, dec_params, prefix, prefix_mask, marker, dec_ids, dec_mask, weights, chunk_size)


def level_prefix(states: jnp.ndarray, seg_valid: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Decoder prefixes of levels 1..S: [B * S, S * n, H] and their mask.

    Row ``b * S + r`` is level r + 1 of text b: the states of all segments laid
    out in order, with the slots of segments > r masked.
    """
    b, s, n, h = states.shape
    prefix = jnp.broadcast_to(states[:, None], (b, s, s, n, h)).reshape(b * s, s * n, h)
    sees = jnp.arange(s)[None, :] <= jnp.arange(s)[:, None]  # [level r, segment]
    mask = sees[None] & seg_valid[:, None, :].astype(bool)  # [b, s, s]
    return prefix, jnp.repeat(mask, n, axis=2).reshape(b * s, s * n)


def continuation_objective(model: CondenseModel, dec_params: Params, states: jnp.ndarray, seg_valid: jnp.ndarray,
                           marker: jnp.ndarray, cont_ids: jnp.ndarray, cont_mask: jnp.ndarray,
                           chunk_size: int | None = None) -> tuple[LossOutput, jnp.ndarray]:
    """Continuation sums (``loss_sum`` adds each text's mean over levels) and texts with a level."""
    b, lv, c = cont_ids.shape
    prefix, prefix_mask = level_prefix(states, seg_valid)
    level_counts = cont_mask.astype(jnp.float32).sum(-1)  # [b, lv]
    levels = (level_counts > 0).sum(-1, keepdims=True).astype(jnp.float32)  # [b, 1]
    weights = jnp.broadcast_to((inverse_count(level_counts) * inverse_count(levels))[..., None], cont_mask.shape)
    out = _decode_and_score(model, dec_params, prefix, prefix_mask, marker, cont_ids.reshape(b * lv, c),
                            cont_mask.reshape(b * lv, c), weights.reshape(b * lv, c), chunk_size)
    return out, (levels[:, 0] > 0).sum().astype(jnp.float32)


def instruction_objective(model: CondenseModel, dec_params: Params, states: jnp.ndarray, seg_valid: jnp.ndarray,
                          ins_ids: jnp.ndarray, ins_mask: jnp.ndarray, ins_loss: jnp.ndarray,
                          chunk_size: int | None = None) -> LossOutput:
    """Instruction sums: ``[condensed context][prompt][completion]``, each text's mean completion loss."""
    b, s, n, h = states.shape
    prefix = states.reshape(b, s * n, h)
    prefix_mask = jnp.repeat(seg_valid, n, axis=1)
    scored = ins_loss.astype(bool) & ins_mask.astype(bool)
    counts = scored.astype(jnp.float32).sum(-1, keepdims=True)
    weights = jnp.broadcast_to(inverse_count(counts), ins_mask.shape)
    return _decode_and_score(model, dec_params, prefix, prefix_mask, None, ins_ids, ins_mask.astype(bool), weights,
                             chunk_size, loss_mask=scored)


def check_weights(weights: Mapping[str, float]) -> dict[str, float]:
    unknown = sorted(set(weights) - set(OBJECTIVES))
    if unknown:
        raise ValueError(f"config key 'condense.objectives.{unknown[0]}': unknown objective "
                         f"(objectives: {', '.join(OBJECTIVES)})")
    out = {name: float(weights.get(name, 0.0)) for name in OBJECTIVES}
    if any(w < 0 for w in out.values()) or not any(out.values()):
        raise ValueError(f"config key 'condense.objectives': weights must be >= 0 and not all 0, got {out}")
    return out


def condense_loss(model: CondenseModel, trainable: Params, frozen: Params, batch: dict, rng: jax.Array | None,
                  *, weights: Mapping[str, float], chunk_size: int | None = None
                  ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """``(loss_sum, weight_sum, metric_sums)`` of a batch, per the ``TrainTask`` contract."""
    states = condense(model, trainable, frozen, batch["enc_ids"], batch["enc_mask"], rng)
    valid = segment_valid(batch["enc_mask"])
    dec_params = model.decoder_params(trainable, frozen)
    markers = trainable["markers"]
    texts = valid.any(-1).sum().astype(jnp.float32)
    loss_sum = jnp.zeros((), jnp.float32)
    metrics = {}
    if weights["ae"]:
        ae = ae_objective(model, dec_params, states, valid, markers["ae"], batch["dec_ids"], batch["dec_mask"],
                          chunk_size)
        loss_sum = loss_sum + weights["ae"] * ae.loss_sum
        metrics.update({"ae_loss": ae.loss_sum, "ae_loss_count": batch["dec_mask"].any(-1).sum().astype(jnp.float32),
                        "ae_correct": ae.correct, "ae_correct_count": ae.count})
    if weights["continuation"]:
        cont, texts_with_levels = continuation_objective(model, dec_params, states, valid, markers["cont"],
                                                         batch["cont_ids"], batch["cont_mask"], chunk_size)
        loss_sum = loss_sum + weights["continuation"] * cont.loss_sum
        metrics.update({"cont_loss": cont.loss_sum, "cont_loss_count": texts_with_levels,
                        "cont_correct": cont.correct, "cont_correct_count": cont.count})
    if weights["instruction"]:
        ins = instruction_objective(model, dec_params, states, valid, batch["ins_ids"], batch["ins_mask"],
                                    batch["ins_loss"], chunk_size)
        loss_sum = loss_sum + weights["instruction"] * ins.loss_sum
        metrics.update({"ins_loss": ins.loss_sum, "ins_loss_count": batch["ins_loss"].any(-1).sum().astype(jnp.float32),
                        "ins_correct": ins.correct, "ins_correct_count": ins.count})
    return loss_sum, texts, metrics


def make_loss_fn(model: CondenseModel, *, weights: Mapping[str, float], chunk_size: int | None
                 ) -> Callable[..., tuple[jax.Array, jax.Array, dict[str, jax.Array]]]:
    chunk = chunk_size or None  # 0 in the config means "all logits at once"
    weights = check_weights(weights)

    def loss_fn(trainable, frozen, batch, rng):
        return condense_loss(model, trainable, frozen, batch, rng, weights=weights, chunk_size=chunk)

    return loss_fn
