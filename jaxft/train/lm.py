"""The causal-LM kit every decoder recipe builds on: one way to load, score, batch and export.

    tuned = load_lm(config)                                    # base + LoRA (or full) split, tokenizer
    task = TrainTask(trainable=tuned.trainable, frozen=tuned.frozen, loss_fn=tuned.lm.loss_fn(), ...)
    batches = GlobalBatches.of(config, example_fn=..., seq_len=...)   # config.train.batch_size is global
    export_finetuned(directory, tuned.lm, trainable, frozen, source=config.model.path)
    loaded = load_finetuned(directory)                         # a ``Finetuned``, whatever the recipe

The loss is the chunked ``causal_lm_loss`` of ``jaxft.train.loss``; label smoothing (which that
scan has no term for) reads the whole [batch, time, vocab] logits, as ``torch``'s
``cross_entropy(label_smoothing=s)`` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxft import lora as lora_lib
from jaxft.lora.adapters import Finetune
from jaxft.models.config import DecoderConfig
from jaxft.train.loss import LossOutput, causal_lm_loss, next_token_targets

Params = dict[str, Any]
Sums = tuple[jax.Array, jax.Array, dict[str, jax.Array]]


def smoothed_loss_sums(logits: jax.Array, targets: jax.Array, mask: jax.Array, smoothing: float,
                       weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(sum of weight * per-token loss, sum of weights, correct argmax count)`` over ``mask``.

    Per token: ``(1 - s) * -log p(target) + s * mean_v(-log p(v))`` -- the uniform-mixture target of
    ``torch.nn.functional.cross_entropy(label_smoothing=s)``. Weights default to 1.
    """
    live = mask.astype(jnp.float32)
    targets = jnp.where(live > 0, targets, 0)  # masked ignore ids (-100) must not index the vocabulary
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    per_token = (1.0 - smoothing) * nll - smoothing * logp.mean(-1) if smoothing else nll
    w = live if weights is None else live * weights.astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32) * live
    return jnp.sum(per_token * w), jnp.sum(w), jnp.sum(correct)


def token_loss(hidden: jax.Array, head_weight: jax.Array, targets: jax.Array, mask: jax.Array,
               weights: jax.Array | None = None, *, label_smoothing: float = 0.0,
               chunk_size: int | None = None) -> LossOutput:
    """The causal-LM loss sums of ``hidden @ head_weight`` (see ``causal_lm_loss``): chunked without
    smoothing; with ``label_smoothing`` > 0 over the full logits (``ce_sum`` stays the plain NLL)."""
    if not label_smoothing:
        return causal_lm_loss(hidden, head_weight, targets, mask, weights, chunk_size=chunk_size)
    logits = jnp.einsum("bth,hv->btv", hidden, head_weight, preferred_element_type=jnp.float32)
    loss_sum, weight_sum, correct = smoothed_loss_sums(logits, targets, mask, label_smoothing, weights)
    ce_sum, _, _ = smoothed_loss_sums(logits, targets, mask, 0.0)
    return LossOutput(loss_sum, weight_sum, correct, jnp.sum(mask.astype(jnp.float32)), ce_sum)


def accuracy_sums(out: LossOutput) -> Sums:
    """The engine's sums with token accuracy logged next to the loss."""
    return out.loss_sum, out.weight_sum, {"accuracy": out.correct, "accuracy_count": out.count}


def loss_only_sums(out: LossOutput) -> Sums:
    return out.loss_sum, out.weight_sum, {}


def shift_left(a: jax.Array) -> jax.Array:
    """Per-token values of the predicted token, aligned with the position that predicts it."""
    return jnp.concatenate([a[:, 1:], jnp.zeros_like(a[:, :1])], axis=1)


@dataclasses.dataclass(frozen=True)
class LM:
    """A decoder as a causal-LM recipe trains it: the LoRA-or-full split and how a batch is scored.

    Batches hold ``input_ids`` and ``loss_mask`` (of the token to be predicted), maybe
    ``attention_mask``; or ready ``targets`` beside ``loss_mask`` (windows of a token stream).
    """

    cfg: DecoderConfig
    tuning: Finetune
    dtype: Any = jnp.float32  # compute dtype
    remat: str = "none"
    chunk_size: int | None = None
    label_smoothing: float = 0.0  # training only: eval reports the plain NLL
    weights_key: str | None = None  # batch entry of per-token loss weights (of each token, shifted here)
    packed: bool = False  # batches carry ``positions`` and ``segment_ids`` (packing)
    model_dropout: bool = False  # the step's rng is split between adapter dropout and ``cfg.dropout``

    @property
    def full(self) -> bool:
        return self.tuning.full

    def params(self, trainable: Params, frozen: Params, rng: jax.Array | None = None) -> Params:
        return self.tuning.params(trainable, frozen, rng)

    def adapters(self, trainable: Params) -> lora_lib.LoRA:
        return lora_lib.LoRA(trainable["lora"], self.tuning.lora_config)

    def hidden(self, params: Params, batch: dict, dropout_rng: jax.Array | None = None) -> jax.Array:
        from jaxft.models.decoder import forward

        positions, segments = (batch.get("positions"), batch.get("segment_ids")) if self.packed else (None, None)
        hidden, _ = forward(self.cfg, params, batch["input_ids"], batch.get("attention_mask"), positions,
                            segment_ids=segments, remat=self.remat, output="hidden", dtype=self.dtype,
                            dropout_rng=dropout_rng)
        return hidden

    def scores(self, params: Params, hidden: jax.Array, batch: dict, *, train: bool = False) -> LossOutput:
        """The loss sums of ``hidden`` against the batch's next tokens."""
        from jaxft.models.decoder import lm_head_weight

        if "targets" in batch:
            targets, mask = batch["targets"], batch["loss_mask"]
        else:
            targets, mask = next_token_targets(batch["input_ids"], batch["loss_mask"])
        weights = shift_left(batch[self.weights_key]) if self.weights_key else None
        return token_loss(hidden, lm_head_weight(self.cfg, params, self.dtype), targets, mask, weights,
                          label_smoothing=self.label_smoothing if train else 0.0, chunk_size=self.chunk_size)

    def loss(self, trainable: Params, frozen: Params, batch: dict, rng: jax.Array | None = None) -> LossOutput:
        """Forward and score one batch; ``rng`` (training) drives dropout and label smoothing."""
        adapter_rng, dropout_rng = rng, None
        if self.model_dropout and rng is not None:
            adapter_rng, dropout_rng = tuple(jax.random.split(rng))
        p = self.params(trainable, frozen, adapter_rng)
        return self.scores(p, self.hidden(p, batch, dropout_rng), batch, train=rng is not None)

    def loss_fn(self, sums: Callable[[LossOutput], Sums] = accuracy_sums):
        """The ``TrainTask`` loss: ``(loss_sum, weight_sum, metric_sums)``, metrics from ``sums``."""
        def loss_fn(trainable, frozen, batch, rng):
            return sums(self.loss(trainable, frozen, batch, rng))

        return loss_fn


class TunedLM(NamedTuple):
    lm: LM
    trainable: Params  # {"lora": adapters} or, fully fine-tuned, {"model": params}
    frozen: Params  # {"base": params} or {}
    tokenizer: Any


def tune(config, cfg: DecoderConfig, params: Params, tokenizer: Any = None, **options) -> TunedLM:
    """The trainable/frozen split of ``params`` per ``config.lora`` (rank 0: all weights train), the
    model's compute dtype, remat and the loss's chunk from ``config``; ``options`` set other ``LM`` fields."""
    trainable, frozen, tuning = lora_lib.finetune_trees(jax.random.PRNGKey(int(config.seed) + 1), cfg, params,
                                                       config.lora)
    lm = LM(cfg, tuning, dtype=jnp.dtype(config.model.compute_dtype), remat=str(config.model.remat),
            chunk_size=int(config.loss.chunk_size) or None, **options)
    return TunedLM(lm, trainable, frozen, tokenizer)


def load_lm(config, model_cfg=None, placement=None, **options) -> TunedLM:
    """``load_model(config.model)`` (or ``model_cfg``, a changed copy of it) onto ``placement`` and ``tune`` over it."""
    from jaxft.loaders import load_model

    cfg, params, tokenizer = load_model(config.model if model_cfg is None else model_cfg, config.seed,
                                        placement=placement)
    return tune(config, cfg, params, tokenizer, **options)


def per_process_batch_size(global_batch_size: int) -> int:
    """This process's share of a global batch; at least one example, or a ``ValueError`` naming the key."""
    procs = jax.process_count()
    share = int(global_batch_size) // procs
    if share < 1:
        raise ValueError(f"config key 'train.batch_size'={global_batch_size} is smaller than the {procs} processes: "
                         f"each needs at least one example of every batch (use a multiple of {procs})")
    return share


@dataclasses.dataclass(frozen=True)
class GlobalBatches:
    """``make_batches`` over records for a *global* batch size: each process reads its share of it."""

    batch_size: int  # global, over all processes
    seed: int
    options: dict  # the rest of make_batches' keywords (example_fn, seq_len, fields, pad_id, packing)

    @classmethod
    def of(cls, config, **options) -> GlobalBatches:
        return cls(int(config.train.batch_size), int(config.seed), options)

    @property
    def per_process(self) -> int:
        return per_process_batch_size(self.batch_size)

    def train(self, records, **overrides):
        """Shuffled, repeating forever (the step count ends training)."""
        from jaxft.data import make_batches

        return make_batches(records, batch_size=self.per_process, seed=self.seed, shuffle=True, num_epochs=None,
                            **{**self.options, **overrides})

    def eval(self, records, **overrides) -> Callable | None:
        """A factory of one ordered pass over ``records`` (None when there are none)."""
        from jaxft.data import make_batches

        if not len(records):
            return None
        per_process, options = self.per_process, {**self.options, **overrides}
        return lambda: make_batches(records, batch_size=per_process, seed=0, shuffle=False, num_epochs=1, **options)


from jaxft.train.lm_export import Finetuned, export_finetuned, load_finetuned  # noqa: E402  (the export half)

__all__ = ["LM", "TunedLM", "GlobalBatches", "Finetuned", "tune", "load_lm", "token_loss", "smoothed_loss_sums",
           "accuracy_sums", "loss_only_sums", "shift_left", "per_process_batch_size", "export_finetuned",
           "load_finetuned"]
