"""The decoder family (Llama, Mistral, Qwen2, Qwen3, minigpt) as ``flax.linen`` modules.

The module tree is named after the Hugging Face modules, and it is the one declaration of the
parameter layout: ``CausalLM(cfg).init`` gives the paths, shapes and logical axes (``param_layout``)
from which ``jaxft/checkpoint/hf_names.py`` derives the HF names and ``jaxft/models/init.py`` the
random parameters::

    {"model": {"embed_tokens": {"weight"}, "layers": {...stacked on axis 0...}, "norm": {...}},
     "lm_head": {"kernel"}}

Layers run under ``nn.scan`` (one compiled layer, whatever the depth), wrapped in
``nn.remat`` for the remat policies. Every parameter carries its logical axis
names (``nn.with_logical_partitioning``; the scan adds ``"layers"`` in front), which
is where the sharding rules read them from.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from jaxft.models import layers
from jaxft.models.attention import AttentionMask, attention, dense_attention
from jaxft.models.config import DecoderConfig
from jaxft.models.rope import apply_rope, inverse_frequencies
from jaxft.models.sharding_hints import constrain_batch

RematPolicy = Literal["none", "full", "save_dots", "save_proj"]
REMAT_POLICIES = ("none", "full", "save_dots", "save_proj")
_INIT_STD = 0.02  # HF's initializer_range default
CARRY_BITS = "carry_bits"  # the checkpoint name of a rematerialised layer's input (see ``saved_as_bits``)
GROUP_BITS = "group_carry_bits"  # the same for a group of layers (``remat_group``)
PROJECTION = "projection"  # the checkpoint name of the q, k, v, gate and up projections' outputs


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Preallocated keys/values for all layers, filled slot by slot.

    All rows of a batch write the same slots; ``lengths`` counts each row's real
    tokens so positions stay right for left-padded prompts.
    """

    # k [layers, batch * kv_heads, max_len, head_dim], v [layers, batch * kv_heads, head_dim, max_len], or
    # tuples of per-layer arrays for the unrolled decode layout (``jaxft.models.decoder.unstack_layers``).
    # These are the operands of the attention's batched matmuls as XLA:CPU lays them out (one batch axis,
    # each contracting its last axis), so a decode step updates the cache in place and reads it where it
    # lies; with [batch, ...] layouts it transposed, or at batch 1 copied, every layer's cache every step.
    k: jnp.ndarray | tuple[jnp.ndarray, ...]
    v: jnp.ndarray | tuple[jnp.ndarray, ...]
    positions: jnp.ndarray  # [batch, max_len] int32
    valid: jnp.ndarray  # [batch, max_len] bool
    index: jnp.ndarray  # [] int32, next slot to write
    lengths: jnp.ndarray  # [batch] int32, real tokens so far

    @property
    def max_len(self) -> int:
        return (self.k[0] if isinstance(self.k, tuple) else self.k).shape[-2]


def positions_from_mask(attention_mask: jnp.ndarray, offset: jnp.ndarray | int = 0) -> jnp.ndarray:
    """Positions counting only real tokens, so left padding does not shift them."""
    pos = jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1
    return jnp.maximum(pos, 0) + (offset[:, None] if isinstance(offset, jax.Array) else offset)


def remat_policy(policy: RematPolicy) -> tuple[bool, Callable | None]:
    """(whether to remat, the checkpoint policy) for a policy name.

    * ``full``: keep each layer's input only; the backward pass recomputes the whole layer.
    * ``save_dots``: also keep every matmul output without batch dimensions.
    * ``save_proj``: also keep the outputs (base + adapter) of the q, k, v, gate and up projections --
      what attention and the SwiGLU need -- and the residual stream between attention and MLP (so the
      o projection is not run again), and recompute the norms, the attention and the LoRA branches'
      small matmuls. With LoRA, ``save_dots`` keeps each adapted projection twice (the
      frozen matmul's output and the adapter's), so this keeps about half as much for the same
      recomputation of the frozen matmuls: none. 16-bit values are kept as their bits
      (``kept_for_backward``), which XLA:CPU would otherwise store as float32.

    Every policy also saves the value named ``CARRY_BITS``: a layer's input in its raw bits
    (``saved_as_bits``), which is what a rematerialised layer keeps anyway.
    """
    if policy == "none":
        return False, None
    carry = jax.checkpoint_policies.save_only_these_names(CARRY_BITS)
    if policy == "full":
        return True, carry
    if policy == "save_dots":
        return True, jax.checkpoint_policies.save_from_both_policies(
            jax.checkpoint_policies.dots_with_no_batch_dims_saveable, carry)
    if policy == "save_proj":
        return True, jax.checkpoint_policies.save_only_these_names(CARRY_BITS, PROJECTION)
    raise ValueError(f"remat policy '{policy}' is not one of {', '.join(REMAT_POLICIES)}")


@jax.custom_jvp
def _from_bits(bits, like):
    return jax.lax.bitcast_convert_type(bits, like.dtype)


@_from_bits.defjvp
def _from_bits_jvp(primals, tangents):
    bits, like = primals
    return _from_bits(bits, like), tangents[1]  # the identity on ``like``'s tangent


def saved_as_bits(x: jnp.ndarray, name: str = CARRY_BITS) -> jnp.ndarray:
    """``x`` unchanged (value and gradient), computed from its bits under the checkpoint name ``name``.

    Called first in a rematerialised layer, it makes what the remat policies save for the layer the
    input's bits (uint16 for a 16-bit float) rather than the float itself. The value is the same;
    the difference is how a compiler stores it: XLA:CPU computes every 16-bit float op, data
    movement included, in float32, so the scan's per-layer stack of saved bfloat16 inputs (its
    dynamic-update-slice in the forward, its dynamic-slice in the backward) becomes a float32 stack,
    twice the bytes; integer stacks it keeps as they are. TPU and GPU store either at 2 bytes.
    Other dtypes pass through untouched.
    """
    if not (jnp.issubdtype(x.dtype, jnp.floating) and jnp.dtype(x.dtype).itemsize == 2):
        return x
    bits = checkpoint_name(jax.lax.bitcast_convert_type(x, jnp.uint16), name)
    return _from_bits(bits, x)


def kept_for_backward(x: jnp.ndarray, name: str) -> jnp.ndarray:
    """``x`` under the checkpoint name ``name``, 16-bit floats through their bits (``saved_as_bits``)."""
    if jnp.issubdtype(x.dtype, jnp.floating) and jnp.dtype(x.dtype).itemsize == 2:
        return saved_as_bits(x, name)
    return checkpoint_name(x, name)


def dropout(x, rate: float, key):
    """Inverted dropout; ``key`` None (evaluation, sampling) leaves ``x`` unchanged."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def sinusoidal_positions(positions: jnp.ndarray, dim: int) -> jnp.ndarray:
    """Fixed sin/cos position vectors [..., dim]: sin in even, cos in odd channels, 10000^(i/dim) wavelengths."""
    exponents = np.arange(0, dim, 2, dtype=np.float64) / dim
    angles = positions.astype(jnp.float32)[..., None] / jnp.asarray(10000.0 ** exponents, jnp.float32)
    return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(*positions.shape, -1)[..., :dim]


def _read(module: nn.Module, name: str, init: Callable, shape: tuple[int, ...], axes: tuple[str | None, ...]):
    """A parameter as stored, which for kernels may be a ``LoraKernel`` or ``QuantizedKernel`` pytree.

    ``self.param`` would compare every stored leaf against the initializer's shape (a quantized
    kernel's codes do not have the kernel's shape) and trace the initializer on each ``apply``;
    ``self.variable`` in the same "params" collection just hands back what is there, so LoRA and
    quantization stay invisible to the model code (they plug in through ``layers.dense``), the
    tree stays one collection with the HF paths, and ``init`` still creates boxed, logically
    named parameters.
    """
    def make():
        value = init(module.make_rng("params"), shape, jnp.float32)
        return nn.LogicallyPartitioned(value, axes)

    return module.variable("params", name, make)


class Dense(nn.Module):
    """A Linear layer with an [in, out] kernel; the kernel protocol of ``layers.dense``.

    ``saved``: the output carries the checkpoint name ``PROJECTION`` (kept by remat ``save_proj``);
    ``bits``: a 16-bit output carries it as its bits (``kept_for_backward``), as remat ``save_proj`` sets it.
    """

    in_features: int
    features: int
    use_bias: bool
    axes: tuple[str | None, str | None]
    saved: bool = False
    bits: bool = False
    init_std: float = _INIT_STD

    @nn.compact
    def __call__(self, x):
        kernel = _read(self, "kernel", nn.initializers.normal(self.init_std), (self.in_features, self.features),
                       self.axes).value
        bias = None
        if self.use_bias:
            bias = _read(self, "bias", nn.initializers.zeros, (self.features,), self.axes[1:]).value
        y = layers.dense(x, kernel, bias)
        if not self.saved:
            return y
        return kept_for_backward(y, PROJECTION) if self.bits else checkpoint_name(y, PROJECTION)


class Norm(nn.Module):
    """RMSNorm (``weight``) or LayerNorm (``weight`` and ``bias``), normalising in float32."""

    dim: int
    kind: str = "rms_norm"
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):
        weight = _read(self, "weight", nn.initializers.ones, (self.dim,), ("norm",)).value
        if self.kind == "layer_norm":
            bias = _read(self, "bias", nn.initializers.zeros, (self.dim,), ("norm",)).value
            return layers.layer_norm(x, weight, bias, self.eps)
        return layers.rms_norm(x, weight, self.eps)


def _block_norm(cfg: DecoderConfig) -> Norm:
    eps = cfg.layer_norm_eps if cfg.norm_type == "layer_norm" else cfg.rms_norm_eps
    return Norm(cfg.hidden_size, cfg.norm_type, eps)


class SelfAttention(nn.Module):
    """Grouped-query attention with rotary positions, optional q/k norms and a KV cache slot.

    ``save_proj``: the q, k, v projections keep 16-bit outputs as bits (``Dense.bits``).
    """

    cfg: DecoderConfig
    save_proj: bool = False
    init_std: float = _INIT_STD

    def setup(self):
        c = self.cfg
        h = c.hidden_size
        kept = dict(saved=True, bits=self.save_proj, init_std=self.init_std)
        self.q_proj = Dense(h, c.q_size, c.attention_bias, ("embed", "heads"), **kept)
        self.k_proj = Dense(h, c.kv_size, c.attention_bias, ("embed", "kv_heads"), **kept)
        self.v_proj = Dense(h, c.kv_size, c.attention_bias, ("embed", "kv_heads"), **kept)
        self.o_proj = Dense(c.q_size, h, c.o_proj_bias, ("heads", "embed"), init_std=self.init_std)
        if c.qk_norm:
            self.q_norm = Norm(c.head_dim, "rms_norm", c.rms_norm_eps)
            self.k_norm = Norm(c.head_dim, "rms_norm", c.rms_norm_eps)

    def __call__(self, h, mask: AttentionMask, positions, cache_kv=None, index=None, keys=None):
        """``h`` [b, t, hidden] -> (output [b, t, hidden], updated (k, v) cache of this layer or None).

        ``keys`` (two PRNG keys) switches dropout on for the probabilities and the output.
        """
        c = self.cfg
        b, t, _ = h.shape
        q = self.q_proj(h).reshape(b, t, c.num_attention_heads, c.head_dim)
        k = self.k_proj(h).reshape(b, t, c.num_key_value_heads, c.head_dim)
        v = self.v_proj(h).reshape(b, t, c.num_key_value_heads, c.head_dim)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if c.position_embedding == "rope":
            inv_freq = inverse_frequencies(c)
            q = apply_rope(q, positions, inv_freq)
            k = apply_rope(k, positions, inv_freq)
        if cache_kv is not None:
            ck, cv = cache_kv  # [b * kv_heads, max_len, head_dim] and [b * kv_heads, head_dim, max_len]
            n = b * c.num_key_value_heads
            ck = jax.lax.dynamic_update_slice(ck, k.transpose(0, 2, 1, 3).reshape(n, t, c.head_dim).astype(ck.dtype),
                                              (0, index, 0))
            cv = jax.lax.dynamic_update_slice(cv, v.transpose(0, 2, 3, 1).reshape(n, c.head_dim, t).astype(cv.dtype),
                                              (0, 0, index))
            cache_kv = (ck, cv)
            o = attention(q, ck.astype(q.dtype), cv.astype(q.dtype), mask, cache_layout=True)
        elif keys is not None and c.dropout > 0:
            o = dense_attention(q, k, v, mask.dense(), lambda p: dropout(p, c.dropout, keys[0]))
        else:
            o = attention(q, k, v, mask)
        o = self.o_proj(o.reshape(b, t, c.q_size))
        return dropout(o, c.dropout, None if keys is None else keys[1]), cache_kv


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate x) * up x)``; ``save_proj`` as in ``SelfAttention``."""

    cfg: DecoderConfig
    save_proj: bool = False
    init_std: float = _INIT_STD

    def setup(self):
        c = self.cfg
        kept = dict(saved=True, bits=self.save_proj, init_std=self.init_std)
        self.gate_proj = Dense(c.hidden_size, c.intermediate_size, c.mlp_bias, ("embed", "mlp"), **kept)
        self.up_proj = Dense(c.hidden_size, c.intermediate_size, c.mlp_bias, ("embed", "mlp"), **kept)
        self.down_proj = Dense(c.intermediate_size, c.hidden_size, c.mlp_bias, ("mlp", "embed"),
                               init_std=self.init_std)

    def __call__(self, h):
        return self.down_proj(jax.nn.silu(self.gate_proj(h)) * self.up_proj(h))


class Block(nn.Module):
    """One decoder layer: sequential (``x + Attn``, then ``+ MLP``) or parallel residual.

    ``remat``: the layer runs rematerialised; its input goes through ``saved_as_bits``.
    ``save_proj`` (set under remat ``save_proj``): the residual stream between attention and MLP carries
    the checkpoint name ``PROJECTION`` too, and what the policy keeps goes through its bits when 16-bit
    (``kept_for_backward``); under other policies the round trip would cost without saving anything.
    """

    cfg: DecoderConfig
    remat: bool = False
    save_proj: bool = False
    init_std: float = _INIT_STD

    def setup(self):
        self.input_layernorm = _block_norm(self.cfg)
        self.self_attn = SelfAttention(self.cfg, self.save_proj, self.init_std)
        self.post_attention_layernorm = _block_norm(self.cfg)
        self.mlp = MLP(self.cfg, self.save_proj, self.init_std)

    def attention_branch(self, x, mask, positions, cache_kv=None, index=None, keys=None):
        """``Attn(norm x)`` and the layer's updated cache."""
        return self.self_attn(self.input_layernorm(x), mask, positions, cache_kv, index, keys)

    def mlp_branch(self, x, key=None):
        """``MLP(norm x)``."""
        return dropout(self.mlp(self.post_attention_layernorm(x)), self.cfg.dropout, key)

    def __call__(self, x, cache_kv, key, mask, positions, index):
        """Scan body: carry ``x``; per layer ``cache_kv`` and ``key``; the rest broadcast."""
        x = constrain_batch(x)  # every layer passes here: keep the residual stream split by rows under FSDP
        if self.remat:
            x = saved_as_bits(x)
        keys = None if key is None else jax.random.split(key, 3)
        attn_keys = None if keys is None else keys[:2]
        mlp_key = None if keys is None else keys[2]
        a, cache_kv = self.attention_branch(x, mask, positions, cache_kv, index, attn_keys)
        if self.cfg.parallel_residual:
            return x + a + self.mlp_branch(x, mlp_key), cache_kv
        x = x + a
        if self.remat and self.save_proj:
            # The MLP norm's backward reads it, and recomputing it means recomputing the o projection.
            x = kept_for_backward(x, PROJECTION)
        return x + self.mlp_branch(x, mlp_key), cache_kv


class Embed(nn.Module):
    """The token table [vocab, hidden] (``weight``, as HF names it); ``attend`` is the tied output projection."""

    num_embeddings: int
    features: int
    init_std: float = _INIT_STD

    def setup(self):
        self.weight = self.param("weight", nn.with_logical_partitioning(nn.initializers.normal(self.init_std),
                                                                        ("vocab", "embed")),
                                 (self.num_embeddings, self.features), jnp.float32)

    def __call__(self, ids, dtype=None):
        return jnp.take(self.weight, ids, axis=0).astype(dtype or self.weight.dtype)

    def attend(self, hidden):
        acc = layers.accumulation_dtype(hidden.dtype)
        return jnp.einsum("...h,vh->...v", hidden, self.weight.astype(hidden.dtype), preferred_element_type=acc)


class LMHead(nn.Module):
    """The untied output projection, ``kernel`` [hidden, vocab] (possibly quantized)."""

    in_features: int
    features: int
    init_std: float = _INIT_STD

    def setup(self):
        self.kernel = _read(self, "kernel", nn.initializers.normal(self.init_std), (self.in_features, self.features),
                            ("embed", "vocab"))

    def weight(self, dtype):
        return layers.materialize(self.kernel.value, dtype)

    def __call__(self, hidden):
        acc = layers.accumulation_dtype(hidden.dtype)
        return jnp.einsum("...h,hv->...v", hidden, self.weight(hidden.dtype), preferred_element_type=acc)


class DecoderModel(nn.Module):
    """HF's ``model``: embeddings, the layer stack and the final norm.

    The layers run under ``nn.scan`` over ``layers`` (stacked on axis 0). ``unroll=True`` is the decode
    layout instead: one ``Block`` per layer, ``layers_0`` ... ``layers_{L-1}``, each reading its own
    unstacked weights. A scan reads layer i's kernels with a dynamic slice of the stacked arrays, which
    XLA:CPU copies before every matrix-vector product; when decoding one token at a time that copy is
    as large as the useful work.

    ``remat_group=k`` (k > 1, dividing the depth; with remat on, no cache) is two-level remat: the scan
    runs over groups of k layers, each group checkpointed as a whole and each layer inside it as before,
    so the backward keeps L/k group inputs plus the k layer inputs of the group being differentiated
    instead of all L layer inputs, for one more forward of every layer. The parameters stay stacked
    [L, ...] under ``layers``; the groups are a reshape of them.
    """

    cfg: DecoderConfig
    remat: RematPolicy = "none"
    unroll: bool = False
    remat_group: int = 1
    init_std: float = _INIT_STD

    def setup(self):
        c = self.cfg
        self.embed_tokens = Embed(c.vocab_size, c.hidden_size, self.init_std)
        use_remat, policy = remat_policy(self.remat)
        block = nn.remat(Block, policy=policy) if use_remat else Block
        save_proj = self.remat == "save_proj"
        if self.unroll:
            self.layers = [block(c, use_remat, save_proj, self.init_std) for _ in range(c.num_hidden_layers)]
        else:
            self.layers = nn.scan(
                block, variable_axes={"params": 0}, split_rngs={"params": True},
                in_axes=(0, 0, nn.broadcast, nn.broadcast, nn.broadcast), length=c.num_hidden_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(c, use_remat, save_proj, self.init_std)
        self.norm = _block_norm(c)

    def __call__(self, x, layer_kv, layer_keys, mask, positions, index):
        if not self.unroll and self.remat_group > 1 and layer_kv is None and not self.is_initializing():
            return self.norm(self._grouped_layers(x, layer_keys, mask, positions)), None
        if not self.unroll:
            x, new_kv = self.layers(x, layer_kv, layer_keys, mask, positions, index)
            return self.norm(x), new_kv
        new_k, new_v = [], []
        for i, block in enumerate(self.layers):
            kv = None if layer_kv is None else (layer_kv[0][i], layer_kv[1][i])
            x, kv = block(x, kv, None if layer_keys is None else layer_keys[i], mask, positions, index)
            if kv is not None:
                new_k.append(kv[0])
                new_v.append(kv[1])
        return self.norm(x), (None if layer_kv is None else (tuple(new_k), tuple(new_v)))

    def with_states(self, x, layer_keys, mask, positions, keep: frozenset[int]):
        """(final normed output, {i: hidden state i}) for ``i`` in ``keep`` (no cache).

        State ``i`` < L is the residual stream entering layer ``i`` (0: the embeddings); state L is the
        final normed output, as in transformers' ``hidden_states``. The stacked layers run as scans
        over the slices between kept states, so nothing else of the stack is kept.
        """
        depth = self.cfg.num_hidden_layers
        if self.remat_group > 1:
            raise ValueError(f"hidden_states cannot be combined with remat_group={self.remat_group}")
        states = {0: x} if 0 in keep else {}
        if self.unroll:
            for i, block in enumerate(self.layers):
                x, _ = block(x, None, None if layer_keys is None else layer_keys[i], mask, positions, None)
                if i + 1 in keep:
                    states[i + 1] = x
        else:
            layer = self._layer_fn(mask, positions)
            stacked = self.variables["params"]["layers"]
            bounds = sorted({0, depth} | {i for i in keep if 0 < i < depth})
            for lo, hi in zip(bounds, bounds[1:]):
                part = jax.tree.map(lambda a, lo=lo, hi=hi: a[lo:hi], stacked)
                keys = None if layer_keys is None else layer_keys[lo:hi]
                x = jax.lax.scan(lambda h, pk: (layer(h, *pk), None), x, (part, keys))[0]
                states[hi] = x
        x = self.norm(x)
        states[depth] = x
        return x, {i: states[i] for i in keep}

    def _layer_fn(self, mask, positions):
        """One layer as a function ``(h, its parameter slice, dropout key) -> h``, under the remat policy,
        for scans written over part of (or groups of) the stacked layers."""
        use_remat, policy = remat_policy(self.remat)
        block = Block(self.cfg, use_remat, self.remat == "save_proj", parent=None)

        def layer(h, p, key):
            return block.apply({"params": p}, h, None, key, mask, positions, None)[0]

        return jax.checkpoint(layer, policy=policy) if use_remat else layer

    def _grouped_layers(self, x, layer_keys, mask, positions):
        """The scanned layers in checkpointed groups of ``remat_group`` (see the class docstring)."""
        c, k = self.cfg, self.remat_group
        use_remat, _ = remat_policy(self.remat)
        if not use_remat:
            raise ValueError(f"remat_group={k} needs a remat policy (full, save_dots or save_proj), not '{self.remat}'")
        if c.num_hidden_layers % k:
            raise ValueError(f"remat_group={k} does not divide the {c.num_hidden_layers} layers")
        groups = c.num_hidden_layers // k
        stacked = jax.tree.map(lambda a: a.reshape(groups, k, *a.shape[1:]), self.variables["params"]["layers"])
        keys = None if layer_keys is None else layer_keys.reshape(groups, k, *layer_keys.shape[1:])
        layer = self._layer_fn(mask, positions)

        @functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.save_only_these_names(GROUP_BITS))
        def group(h, ps, ks):
            h = saved_as_bits(constrain_batch(h), GROUP_BITS)
            return jax.lax.scan(lambda h, pk: (layer(h, *pk), None), h, (ps, ks))[0]

        return jax.lax.scan(lambda h, g: (group(h, *g), None), x, (stacked, keys))[0]


def kept_states(cfg: DecoderConfig, hidden_states: tuple[int, ...]) -> tuple[int, ...]:
    """``hidden_states`` indices (negative ones count from the end of the L + 1 states) as 0..L."""
    count = cfg.num_hidden_layers + 1
    out = []
    for i in hidden_states:
        if not -count <= i < count:
            raise ValueError(f"hidden_states index {i} is out of range: the decoder has {count} hidden states "
                             f"(the embeddings, then each of its {count - 1} layers' outputs)")
        out.append(i % count)
    return tuple(out)


class CausalLM(nn.Module):
    """The decoder with its output projection (``lm_head``, or the embedding table when tied).

    ``init_std``: the standard deviation of the random matrices ``init`` draws (HF's ``initializer_range``);
    norm weights start at one, biases at zero.
    """

    cfg: DecoderConfig
    remat: RematPolicy = "none"
    unroll: bool = False  # parameters in the decode layout (``jaxft.models.decoder.unstack_layers``)
    remat_group: int = 1  # > 1: two-level remat over groups of this many layers (see ``DecoderModel``)
    init_std: float = _INIT_STD

    def setup(self):
        self.model = DecoderModel(self.cfg, self.remat, self.unroll, self.remat_group, self.init_std)
        if not self.cfg.tie_word_embeddings:
            self.lm_head = LMHead(self.cfg.hidden_size, self.cfg.vocab_size, self.init_std)

    def embed(self, input_ids, dtype=None):
        return self.model.embed_tokens(input_ids, dtype)

    def logits(self, hidden):
        """float32 logits (float64 for float64 hidden states)."""
        if self.cfg.tie_word_embeddings:
            return self.model.embed_tokens.attend(hidden)
        return self.lm_head(hidden)

    def lm_head_weight(self, dtype):
        """The output projection as [hidden, vocab], for losses that chunk the vocabulary."""
        if self.cfg.tie_word_embeddings:
            return self.model.embed_tokens.weight.astype(dtype).T
        return self.lm_head.weight(dtype)

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, *, inputs_embeds=None,
                 cache: KVCache | None = None, output: Literal["logits", "hidden"] = "logits", dtype=None,
                 segment_ids=None, dropout_rng=None, hidden_states: tuple[int, ...] | None = None):
        """See ``jaxft.models.decoder.forward``, which is this call over a parameter tree."""
        c = self.cfg
        if hidden_states is not None and cache is not None:
            raise ValueError("hidden_states cannot be returned with a KV cache (it is for cache-free forwards)")
        x = self._inputs(input_ids, inputs_embeds, dtype)
        b, t, _ = x.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), bool)
        attention_mask = attention_mask.astype(bool)
        mask, position_ids, index, layer_kv = _attention_inputs(c, cache, attention_mask, position_ids, segment_ids,
                                                                b, t)
        if c.position_embedding == "sinusoidal":
            x = x + sinusoidal_positions(position_ids, c.hidden_size).astype(x.dtype)
        layer_keys = None
        if dropout_rng is not None and c.dropout > 0:
            # Explicit keys (not a flax rng stream) keep the dropout masks of earlier runs.
            dropout_rng, embed_key = jax.random.split(dropout_rng)
            x = dropout(x, c.dropout, embed_key)
            layer_keys = jax.random.split(dropout_rng, c.num_hidden_layers)
        if hidden_states is not None:
            wanted = kept_states(c, hidden_states)
            hidden, states = self.model.with_states(x, layer_keys, mask, position_ids, frozenset(wanted))
            out = hidden if output == "hidden" else self.logits(hidden)
            return out, None, tuple(states[i] for i in wanted)
        hidden, new_kv = self.model(x, layer_kv, layer_keys, mask, position_ids, index)

        if cache is not None:
            cache = KVCache(
                k=new_kv[0], v=new_kv[1], positions=mask.kv_positions, valid=mask.kv_valid,
                index=cache.index + t, lengths=cache.lengths + attention_mask.sum(-1).astype(jnp.int32),
            )
        if output == "hidden":
            return hidden, cache
        return self.logits(hidden), cache

    def _inputs(self, input_ids, inputs_embeds, dtype):
        """The first layer's input: token embeddings (times ``embedding_multiplier``) or ``inputs_embeds``."""
        if inputs_embeds is not None:
            return inputs_embeds.astype(dtype or inputs_embeds.dtype)
        x = self.embed(input_ids, dtype)
        if self.cfg.embedding_multiplier != 1.0:
            x = x * jnp.asarray(self.cfg.embedding_multiplier, x.dtype)
        return x


def _attention_inputs(c: DecoderConfig, cache: KVCache | None, attention_mask, position_ids, segment_ids, b: int,
                      t: int):
    """(mask, position ids, cache index, per-layer (k, v)) for a forward with or without a cache."""
    if cache is None:
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask)
        slots = jnp.broadcast_to(jnp.arange(t), (b, t))
        mask = AttentionMask(slots, attention_mask, position_ids, position_ids, c.sliding_window,
                             segment_ids=segment_ids)
        return mask, position_ids, None, None
    if segment_ids is not None:
        raise ValueError("segment_ids (packed rows) cannot be used with a KV cache")
    if position_ids is None:
        position_ids = positions_from_mask(attention_mask, cache.lengths)
    index = cache.index
    kv_positions = jax.lax.dynamic_update_slice(cache.positions, position_ids.astype(jnp.int32), (0, index))
    kv_valid = jax.lax.dynamic_update_slice(cache.valid, attention_mask, (0, index))
    slots = jnp.broadcast_to(index + jnp.arange(t), (b, t))
    mask = AttentionMask(slots, kv_valid, position_ids, kv_positions, c.sliding_window, has_cache=True)
    return mask, position_ids, index, (cache.k, cache.v)
