"""Autoregressive generation as one compiled program.

One prefill call fills the KV cache with the (left-padded) prompts, then a
``lax.while_loop`` runs single-token decode steps until every row has finished
or ``max_new_tokens`` is reached. The whole thing is one ``jax.jit`` whose
static arguments are the model and sampling configs, so there is no Python work
per token and no retrace for new prompts of the same shape.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxft.models.config import DecoderConfig
from jaxft.models.decoder import KVCache, forward, init_cache, lm_head, unstack_layers
from jaxft.sampling import processors
from jaxft.sampling.config import (FINISH_EOS, FINISH_LENGTH, FINISH_REASONS, FINISH_STOP_SEQUENCE,
                                   SamplingConfig)

Params = dict[str, Any]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class GenerationOutput:
    """New tokens only (the prompt is not repeated).

    ``tokens[i, :lengths[i]]`` is row i's output, including the EOS or stop
    sequence that ended it; the rest of the row is the pad id.
    ``finish_reason`` holds codes from ``jaxft.sampling.config.FINISH_REASONS``.
    """

    tokens: jax.Array  # [batch, max_new_tokens] int32
    lengths: jax.Array  # [batch] int32
    finish_reason: jax.Array  # [batch] int32
    logits: jax.Array | None = None  # [batch, max_new_tokens, vocab] float32, with output_logits

    def finish_reasons(self) -> list[str]:
        return [FINISH_REASONS[int(code)] for code in np.asarray(self.finish_reason)]

    def token_lists(self) -> list[list[int]]:
        """Each row's tokens, trimmed to its length."""
        tokens, lengths = np.asarray(self.tokens), np.asarray(self.lengths)
        return [row[:n].tolist() for row, n in zip(tokens, lengths)]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _LoopState:
    step: jax.Array  # [] index of the token chosen next
    cache: KVCache
    history: jax.Array  # [batch, prompt_len + max_new] prompt then generated ids
    valid: jax.Array  # [batch, prompt_len + max_new] real tokens in history
    finished: jax.Array  # [batch] bool
    lengths: jax.Array  # [batch] int32
    reason: jax.Array  # [batch] int32
    logits: jax.Array | None  # [batch, max_new, vocab], only with output_logits


def generate(
    cfg: DecoderConfig,
    params: Params,
    prompt_ids=None,
    sampling: SamplingConfig = SamplingConfig(),
    *,
    attention_mask=None,
    lora: Any = None,
    seed: int = 0,
    inputs_embeds=None,
) -> GenerationOutput:
    """Generate up to ``sampling.max_new_tokens`` tokens for each prompt row.

    ``prompt_ids`` [batch, prompt_len] is left-padded, with ``attention_mask``
    0 on the padding (no mask means no padding). Instead of ids, a prefill can
    start from ``inputs_embeds`` [batch, prompt_len, hidden]; repetition
    penalties and n-gram bans then only see the generated tokens. ``lora``, if
    given, adapts ``params`` on the fly through ``jaxft.lora.apply``. The same
    ``seed`` gives the same samples. ``params`` may already be split by
    ``jaxft.models.decoder.unstack_layers``, which saves a copy of the weights per call.
    """
    if not isinstance(sampling, SamplingConfig):
        raise TypeError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
    if (prompt_ids is None) == (inputs_embeds is None):
        raise ValueError("generate: pass exactly one of prompt_ids and inputs_embeds")
    if prompt_ids is not None:
        prompt_ids = _check_ids(cfg, prompt_ids)
        batch, prompt_len = prompt_ids.shape
    else:
        inputs_embeds = jnp.asarray(inputs_embeds)
        if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != cfg.hidden_size:
            raise ValueError(f"generate: inputs_embeds must be [batch, prompt_len, {cfg.hidden_size}], "
                             f"got shape {tuple(inputs_embeds.shape)}")
        batch, prompt_len = inputs_embeds.shape[:2]
    attention_mask = _check_mask(attention_mask, batch, prompt_len)
    if lora is not None and "layers" not in params["model"]:
        raise ValueError("generate: lora= needs the stacked parameters (model.layers), not the decode layout of "
                         "unstack_layers; apply or merge the adapters before splitting")
    eos_ids, pad_id = _special_ids(cfg, sampling)
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"generate: seed must be an int in [0, 2**32), got {seed!r}")
    return _generate(cfg, sampling, eos_ids, pad_id, params, prompt_ids, inputs_embeds, attention_mask,
                     lora, np.uint32(seed))


def _check_ids(cfg: DecoderConfig, prompt_ids) -> jax.Array:
    shape = np.shape(prompt_ids)
    if len(shape) != 2 or shape[1] == 0:
        raise ValueError(f"generate: prompt_ids must be [batch, prompt_len] with prompt_len > 0, got shape {shape}")
    if not isinstance(prompt_ids, jax.core.Tracer):
        ids = np.asarray(prompt_ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"generate: prompt_ids must be integer token ids, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab_size):
            raise ValueError(f"generate: prompt_ids must lie in [0, {cfg.vocab_size}), "
                             f"got values in [{ids.min()}, {ids.max()}]")
    return jnp.asarray(prompt_ids, jnp.int32)


def _check_mask(attention_mask, batch: int, prompt_len: int) -> jax.Array:
    if attention_mask is None:
        return jnp.ones((batch, prompt_len), bool)
    if np.shape(attention_mask) != (batch, prompt_len):
        raise ValueError(f"generate: attention_mask must have shape {(batch, prompt_len)}, "
                         f"got {np.shape(attention_mask)}")
    if not isinstance(attention_mask, jax.core.Tracer):
        # The first new token is read off the last prompt column, so every row
        # must end with a real token: padding goes on the left.
        mask = np.asarray(attention_mask).astype(bool)
        if not mask[:, -1].all() or (np.diff(mask.astype(np.int8), axis=-1) < 0).any():
            raise ValueError("generate: prompts must be left-padded (attention_mask rows of the form 0..0 1..1 "
                             "ending in 1); pad on the left, e.g. tokenizer.padding_side = 'left'")
    return jnp.asarray(attention_mask, bool)


def _special_ids(cfg: DecoderConfig, sampling: SamplingConfig) -> tuple[tuple[int, ...], int]:
    eos = cfg.eos_token_ids if sampling.eos_token_ids is None else sampling.eos_token_ids
    pad = sampling.pad_token_id
    if pad is None:
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else (eos[0] if eos else 0)
    ids = {"eos_token_ids": eos, "pad_token_id": (pad,),
           "stop_sequences": tuple(t for seq in sampling.stop_sequences for t in seq)}
    for name, values in ids.items():
        bad = [t for t in values if not 0 <= t < cfg.vocab_size]
        if bad:
            raise ValueError(f"generate: {name} has ids {bad} outside the vocabulary [0, {cfg.vocab_size})")
    return tuple(eos), int(pad)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _generate(cfg: DecoderConfig, sampling: SamplingConfig, eos_ids: tuple[int, ...], pad_id: int,
              params: Params, prompt_ids, inputs_embeds, attention_mask, lora, seed) -> GenerationOutput:
    if lora is not None:
        from jaxft.lora import apply as apply_lora  # imported late: optional at import time

        params = apply_lora(params, lora)
    batch, prompt_len = attention_mask.shape
    max_new = sampling.max_new_tokens
    table = params["model"]["embed_tokens"]["weight"]
    dtype = table.dtype if inputs_embeds is None else inputs_embeds.dtype

    # Unrolled layers over per-layer weights and caches: each decode step reads every weight once, in place.
    # (One copy of the weights per call, unless the caller passes them split already.)
    params = unstack_layers(params)
    cache = init_cache(cfg, batch, prompt_len + max_new, dtype, per_layer=True)
    hidden, cache = forward(cfg, params, prompt_ids, attention_mask, inputs_embeds=inputs_embeds,
                            cache=cache, output="hidden")
    first_logits = lm_head(cfg, params, hidden[:, -1])

    # With embeddings there are no prompt ids: those slots stay invalid, so
    # penalties only see generated tokens.
    history = jnp.full((batch, prompt_len + max_new), pad_id, jnp.int32)
    valid = jnp.zeros((batch, prompt_len + max_new), bool)
    if prompt_ids is not None:
        history = history.at[:, :prompt_len].set(prompt_ids)
        valid = valid.at[:, :prompt_len].set(attention_mask)
    key = jax.random.key(seed)
    choose = functools.partial(_choose_token, sampling, eos_ids, pad_id, prompt_len, key)

    state = _LoopState(
        step=jnp.zeros((), jnp.int32), cache=cache, history=history, valid=valid,
        finished=jnp.zeros((batch,), bool),
        lengths=jnp.full((batch,), max_new, jnp.int32),
        reason=jnp.full((batch,), FINISH_LENGTH, jnp.int32),
        logits=jnp.zeros((batch, max_new, first_logits.shape[-1]), jnp.float32) if sampling.output_logits else None,
    )
    state = choose(state, first_logits)

    def keep_going(s: _LoopState):
        return (s.step < max_new) & ~s.finished.all()

    def decode_step(s: _LoopState) -> _LoopState:
        last = jax.lax.dynamic_slice_in_dim(s.history, prompt_len + s.step - 1, 1, axis=1)
        logits, cache = forward(cfg, params, last, jnp.ones_like(last, bool), cache=s.cache)
        return choose(dataclasses.replace(s, cache=cache), logits[:, 0])

    state = jax.lax.while_loop(keep_going, decode_step, state)
    return GenerationOutput(tokens=state.history[:, prompt_len:], lengths=state.lengths,
                            finish_reason=state.reason, logits=state.logits)


def _choose_token(sampling: SamplingConfig, eos_ids: tuple[int, ...], pad_id: int, prompt_len: int,
                  key: jax.Array, s: _LoopState, logits: jax.Array) -> _LoopState:
    """Pick token ``s.step`` from its logits, record it, and update which rows are done."""
    step, slot = s.step, prompt_len + s.step
    processed = processors.process_logits(sampling, logits, s.history, s.valid, slot, step, eos_ids)
    token = processors.select_token(sampling, processed, jax.random.fold_in(key, step))
    token = jnp.where(s.finished, pad_id, token)
    history = jax.lax.dynamic_update_slice_in_dim(s.history, token[:, None], slot, axis=1)
    valid = jax.lax.dynamic_update_slice_in_dim(s.valid, ~s.finished[:, None], slot, axis=1)

    generated = history[:, prompt_len:]
    hit_eos = jnp.isin(token, jnp.asarray(eos_ids, jnp.int32)) if eos_ids else jnp.zeros_like(s.finished)
    hit_stop = _ends_with_stop(generated, step, sampling.stop_sequences)
    hit_stop &= step + 1 >= sampling.min_new_tokens
    newly = ~s.finished & (hit_eos | hit_stop)
    reason = jnp.where(newly, jnp.where(hit_eos, FINISH_EOS, FINISH_STOP_SEQUENCE), s.reason)
    lengths = jnp.where(newly, step + 1, s.lengths)
    stored = s.logits
    if stored is not None:
        stored = jax.lax.dynamic_update_slice_in_dim(stored, logits[:, None].astype(stored.dtype), step, axis=1)
    return dataclasses.replace(s, step=step + 1, history=history, valid=valid, finished=s.finished | newly,
                               lengths=lengths, reason=reason, logits=stored)


def _ends_with_stop(generated: jax.Array, step: jax.Array, stop_sequences) -> jax.Array:
    """[batch] bool: generated tokens 0..step end with one of the stop sequences."""
    hit = jnp.zeros(generated.shape[:1], bool)
    for seq in stop_sequences:
        n = len(seq)
        if n > generated.shape[1]:
            continue
        start = jnp.maximum(step + 1 - n, 0)
        tail = jax.lax.dynamic_slice_in_dim(generated, start, n, axis=1)
        hit |= (step + 1 >= n) & (tail == jnp.asarray(seq, jnp.int32)).all(-1)
    return hit
