"""Quantize a kernel read on the host straight onto its shardings, one device's share at a time.

A loader holds one stacked kernel [layers, in, out] on the host; this module gives every
device only the values its shards of the ``QuantizedKernel`` need and quantizes them there
(``nf4.nf4_blocks``, ``int8.int8_codes``), so no device ever holds the whole unquantized
kernel. The order-independent parts (block and column maxima) are computed per shard; the
one order-dependent sum (double quantization's mean) runs as ``nf4.double_quantize`` on the
gathered maxima, the same program ``quantize_kernel`` runs, so the result equals quantizing
the whole kernel on one device bit for bit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxft.quant import int8, nf4
from jaxft.quant.kernel import QuantizedKernel, quantize_kernel

# (leaf name of QuantizedKernel, leaf shape) -> the sharding that leaf is placed on.
LeafSharding = Callable[[str, tuple[int, ...]], jax.sharding.Sharding]
Span = tuple[tuple[int, int], ...]  # (start, stop) per dimension


def quantized_shapes(shape: tuple[int, ...], dtype, fmt: str, block_size: int = 64,
                     double_quant: bool = False) -> QuantizedKernel:
    """The ``QuantizedKernel`` of a kernel of ``shape`` with ShapeDtypeStruct leaves (nothing computed)."""
    return jax.eval_shape(lambda w: quantize_kernel(w, fmt, block_size, double_quant),
                          jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype)))


def _span(index: tuple[slice, ...], shape: tuple[int, ...]) -> Span:
    return tuple(s.indices(n)[:2] for s, n in zip(index, shape))


def _union(a: Span, b: Span) -> Span:
    return tuple((min(x[0], y[0]), max(x[1], y[1])) for x, y in zip(a, b))


def _within(span: Span, outer: Span):
    """Slices of ``span`` relative to ``outer`` (None where it is all of it)."""
    if span == outer:
        return None
    return tuple(slice(s - o, e - o) for (s, e), (o, _) in zip(span, outer))


def _shards(shape, sharding) -> dict:
    return {d: _span(i, shape) for d, i in sharding.addressable_devices_indices_map(tuple(shape)).items()}


def flat_chunk(host: np.ndarray, layers: tuple[int, int], start: int, stop: int) -> np.ndarray:
    """Elements ``[start, stop)`` of each layer of ``host`` [L, in, out] in the PyTorch [out, in] row-major
    order (NF4's block order), copying only the output columns they fall in."""
    d_in, d_out = host.shape[-2:]
    stop = min(stop, d_in * d_out)
    c0, c1 = start // d_in, min(d_out, -(-stop // d_in))
    part = np.swapaxes(host[layers[0]:layers[1], :, c0:c1], -1, -2).reshape(layers[1] - layers[0], -1)
    return np.ascontiguousarray(part[:, start - c0 * d_in:stop - c0 * d_in])


def _assemble(shape, sharding, piece_of: Callable[[jax.Device], jax.Array]) -> jax.Array:
    arrays = [piece_of(d) for d in sharding.addressable_devices_indices_map(tuple(shape))]
    return jax.make_array_from_single_device_arrays(tuple(shape), sharding, arrays)


def _from_host(value: np.ndarray, sharding) -> jax.Array:
    """A host array onto ``sharding`` (a copy, not a view of a device buffer: on CPU a view would keep it alive)."""
    return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


def _computed_once(compute: Callable[[Span, jax.Device], tuple]):
    """Per device, the outputs for its span: computed on the first device of each span, copied to the others."""
    done: dict[Span, tuple] = {}

    def get(span: Span, device: jax.Device) -> tuple:
        if span not in done:
            done[span] = compute(span, device)
        return tuple(jax.device_put(x, device) for x in done[span])

    return get


def _piece(x: jax.Array, within, device) -> jax.Array:
    return jax.device_put(x if within is None else x[within], device)


def _nf4_onto(host: np.ndarray, like: QuantizedKernel, sharding_of: LeafSharding) -> QuantizedKernel:
    bs, dq = like.block_size, like.scale_scales is not None
    codes_sh = sharding_of("codes", like.codes.shape)
    codes = _shards(like.codes.shape, codes_sh)
    scales_sh = sharding_of("scales", like.scales.shape)
    scales = _shards(like.scales.shape, scales_sh) if not dq else {}
    # A device's work: whole blocks of the layers its codes (and, without double quant, maxima) cover.
    spans = {d: _union(s[:2], scales.get(d, s[:2])) for d, s in codes.items()}
    blocks = _computed_once(lambda sp, d: nf4.nf4_blocks(jax.device_put(
        flat_chunk(host, sp[0], sp[1][0] * bs, sp[1][1] * bs), d), block_size=bs))

    def codes_piece(d):
        c, _ = blocks(spans[d], d)
        return _piece(c, _within(codes[d], spans[d] + ((0, c.shape[-1]),)), d)

    codes_arr = _assemble(like.codes.shape, codes_sh, codes_piece)
    if not dq:
        scales_arr = _assemble(like.scales.shape, scales_sh,
                               lambda d: _piece(blocks(spans[d], d)[1], _within(scales[d], spans[d]), d))
        return QuantizedKernel(codes_arr, scales_arr, **_meta(like))
    absmax = _gathered_absmax(host, like, spans, blocks)
    dq_codes, nested, offset = (np.array(x) for x in nf4.double_quantize(jax.device_put(absmax, next(iter(codes)))))
    del absmax
    return QuantizedKernel(codes_arr, _from_host(dq_codes, scales_sh),
                           _from_host(nested, sharding_of("scale_scales", nested.shape)),
                           _from_host(offset, sharding_of("scale_offset", offset.shape)), **_meta(like))


def _gathered_absmax(host, like: QuantizedKernel, spans: dict, blocks) -> np.ndarray:
    """float32 [L, blocks] block maxima on the host: this process's shards, plus any layer they miss
    (other processes' shares) computed here layer by layer."""
    out = np.zeros(like.scales.shape, np.float32)
    seen = np.zeros(like.scales.shape, bool)
    for d, span in spans.items():
        (l0, l1), (b0, b1) = span
        out[l0:l1, b0:b1] = np.asarray(blocks(span, d)[1])
        seen[l0:l1, b0:b1] = True
    first = next(iter(spans))
    d_in, d_out = host.shape[-2:]
    for layer in np.flatnonzero(~seen.all(axis=1)):
        chunk = flat_chunk(host, (int(layer), int(layer) + 1), 0, d_in * d_out)
        out[layer] = np.asarray(nf4.nf4_blocks(jax.device_put(chunk, first), block_size=like.block_size)[1])[0]
    return out


def _int8_scales(host: np.ndarray, devices: list) -> np.ndarray:
    """float32 [L, out] column maxima / 127, the columns split over ``devices`` (a column needs all its rows)."""
    d_out = host.shape[-1]
    bounds = np.linspace(0, d_out, len(devices) + 1).astype(int)
    parts = [int8.int8_scales(jax.device_put(host[..., c0:c1], d))
             for d, c0, c1 in zip(devices, bounds[:-1], bounds[1:]) if c1 > c0]
    return np.concatenate([np.asarray(p) for p in parts], axis=-1)


def _int8_onto(host: np.ndarray, like: QuantizedKernel, sharding_of: LeafSharding) -> QuantizedKernel:
    scales_sh = sharding_of("scales", like.scales.shape)
    codes_sh = sharding_of("codes", like.codes.shape)
    scales = _int8_scales(host, list(codes_sh.addressable_devices_indices_map(like.codes.shape)))
    codes = _computed_once(lambda sp, d: (int8.int8_codes(
        jax.device_put(host[tuple(slice(*s) for s in sp)], d),
        jax.device_put(scales[sp[0][0]:sp[0][1], sp[2][0]:sp[2][1]], d)),))
    spans = _shards(like.codes.shape, codes_sh)
    codes_arr = _assemble(like.codes.shape, codes_sh, lambda d: codes(spans[d], d)[0])
    return QuantizedKernel(codes_arr, _from_host(scales, scales_sh), **_meta(like))


def _meta(like: QuantizedKernel) -> dict:
    return dict(fmt=like.fmt, kernel_shape=like.kernel_shape, block_size=like.block_size, dtype_name=like.dtype_name)


def quantize_onto(host: np.ndarray, sharding_of: LeafSharding, fmt: str = "nf4", block_size: int = 64,
                  double_quant: bool = False) -> QuantizedKernel:
    """``quantize_kernel(host)`` (bit for bit) with every leaf on ``sharding_of(leaf name, shape)``,
    each device quantizing only its share. A kernel without exactly one leading (layer) axis is
    quantized whole on the first device of its codes' sharding, then placed."""
    like = quantized_shapes(host.shape, host.dtype, fmt, block_size, double_quant)
    if host.ndim == 3:
        return (_int8_onto if fmt == "int8" else _nf4_onto)(host, like, sharding_of)
    device = next(iter(sharding_of("codes", like.codes.shape).addressable_devices))
    whole = quantize_kernel(jax.device_put(host, device), fmt, block_size, double_quant)
    leaves = {name: getattr(whole, name) for name in ARRAYS}
    return QuantizedKernel(**{name: None if x is None else _from_host(np.array(x), sharding_of(name, x.shape))
                              for name, x in leaves.items()}, **_meta(like))


ARRAYS = ("codes", "scales", "scale_scales", "scale_offset")


@functools.cache
def _program_bytes(fn, *shapes, **static) -> int:
    """Arguments + temporaries + outputs of one device's program, from XLA's buffer assignment."""
    args = [jax.ShapeDtypeStruct(s, d) for s, d in shapes]
    mem = fn.lower(*args, **static).compile().memory_analysis()
    return int(mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes)


def working_bytes(shape: tuple[int, ...], dtype, sharding_of: LeafSharding, fmt: str = "nf4", block_size: int = 64,
                  double_quant: bool = False) -> dict[jax.Device, int]:
    """Per device, an upper bound of what ``quantize_onto`` holds there on top of the kernel's final shards:
    its share of the unquantized values and the quantizing program's buffers (nothing is computed)."""
    like = quantized_shapes(shape, dtype, fmt, block_size, double_quant)
    dtype = jnp.dtype(dtype)
    if len(shape) != 3:  # quantized whole on one device
        device = next(iter(sharding_of("codes", like.codes.shape).addressable_devices))
        return {device: _program_bytes(nf4.nf4_blocks if fmt == "nf4" else int8.int8_scales,
                                       ((math.prod(shape[:-2]) or 1, math.prod(shape[-2:])), dtype),
                                       **({"block_size": block_size} if fmt == "nf4" else {}))}
    if fmt == "int8":
        codes = _shards(like.codes.shape, sharding_of("codes", like.codes.shape))
        f32 = jnp.dtype(jnp.float32)
        columns = -(-shape[-1] // len(codes))  # _int8_scales's split
        out = {d: _program_bytes(int8.int8_scales, ((shape[0], shape[1], columns), dtype)) for d in codes}
        for d, sp in codes.items():
            sizes = tuple(e - s for s, e in sp)
            out[d] = max(out.get(d, 0), _program_bytes(int8.int8_codes, (sizes, dtype),
                                                       ((sizes[0], sizes[2]), f32)))
        return out
    codes = _shards(like.codes.shape, sharding_of("codes", like.codes.shape))
    scales = {} if double_quant else _shards(like.scales.shape, sharding_of("scales", like.scales.shape))
    out = {}
    for d, s in codes.items():
        (l0, l1), (b0, b1) = _union(s[:2], scales.get(d, s[:2]))
        n = min(b1 * block_size, shape[1] * shape[2]) - b0 * block_size
        out[d] = _program_bytes(nf4.nf4_blocks, ((l1 - l0, n), dtype), block_size=block_size)
    if double_quant:
        first = next(iter(codes))
        out[first] += _program_bytes(nf4.double_quantize, (like.scales.shape, jnp.dtype(jnp.float32)))
    return out


def shard_bytes(shape: tuple[int, ...], dtype, sharding: jax.sharding.Sharding) -> dict[jax.Device, int]:
    """Bytes of each device's shard of an array of ``shape`` on ``sharding``."""
    size = math.prod(sharding.shard_shape(tuple(shape))) * jnp.dtype(dtype).itemsize
    return {d: size for d in sharding.addressable_devices}
