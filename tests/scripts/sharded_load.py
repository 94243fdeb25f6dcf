"""Load a checkpoint onto 8 fake devices and measure what the load holds (used by tests).

Usage: python sharded_load.py OUT.json CHECKPOINT_DIR GGUF_FILE
Run with XLA_FLAGS=--xla_force_host_platform_device_count=8.

For each base format (none, nf4 with double quantization, int8) it loads the checkpoint onto an
fsdp=8 placement, checks the params equal an unsharded load (``load_pretrained`` + ``quantize``) bit
for bit and sit on ``placement.sharding_for``, and measures, while a second load runs, the peak live
bytes per device (``jax.live_arrays``) and the peak growth of the process's anonymous memory
(RssAnon: the fake devices' buffers live there too). The same is measured for the unsharded load
followed by ``Trainer``'s placement, the route recipes took before.
"""

import ctypes
import gc
import json
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxft.checkpoint.hf import load_pretrained
from jaxft.config import model_section
from jaxft.loaders import load_footprint, load_model, quantize
from jaxft.train import mesh as mesh_lib
from jaxft.train.placement import Placement
from jaxft.train.trainer import place

out_path, checkpoint, gguf_file = sys.argv[1:4]
_libc = ctypes.CDLL("libc.so.6")
placement = Placement(mesh_lib.make_mesh({"fsdp": 8}))


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def device_bytes() -> dict:
    per: dict = {}
    for a in jax.live_arrays():
        size = int(np.prod(a.sharding.shard_shape(a.shape))) * a.dtype.itemsize
        for d in a.sharding.device_set:
            per[d.id] = per.get(d.id, 0) + size
    return per


class Peaks:
    """Samples per-device live bytes and RssAnon in a thread while the block runs."""

    def __enter__(self):
        gc.collect()
        _libc.malloc_trim(0)  # hand freed heap back, so earlier loads' memory is not silently reused
        self.rss0, self.rss, self.dev, self._stop = rss_anon(), 0, {}, False
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def sample(self):
        self.rss = max(self.rss, rss_anon())
        for d, n in device_bytes().items():
            self.dev[d] = max(self.dev.get(d, 0), n)

    def _sample(self):
        while not self._stop:
            self.sample()
            time.sleep(0.0005)

    def __exit__(self, *exc):
        self._stop = True
        self._thread.join()
        self.sample()
        return False


def nbytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def host(tree):
    return jax.tree.map(np.array, tree)  # copies: a view of a CPU buffer would keep it alive


def check_placed(params):
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in flat:
        names = tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        assert leaf.sharding == placement.sharding_for(names, leaf.shape), names
    again = place(params, placement.shardings(params))
    assert all(a is b for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params))), "place copied a leaf"
    return sum(len(leaf.sharding.device_set) > 1 and not leaf.sharding.is_fully_replicated for _, leaf in flat)


def equal(a, b, what):
    assert jax.tree.structure(a) == jax.tree.structure(b), what
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape, what
        np.testing.assert_array_equal(np.asarray(x).view(np.uint8), np.asarray(y).view(np.uint8), err_msg=what)


results = {"devices": len(jax.devices())}
for fmt in ("none", "nf4", "int8"):
    double_quant = fmt == "nf4"
    model_cfg = model_section(path=checkpoint, tokenizer="demo:byte", dtype="bfloat16", quantize=fmt,
                              double_quant=double_quant)
    cfg, plain = load_pretrained(checkpoint, dtype=jnp.bfloat16)
    unsharded_bf16 = nbytes(plain)
    reference = host(quantize(plain, cfg, fmt, double_quant=double_quant))
    del plain
    loaded = load_model(model_cfg, placement=placement)  # also compiles what the measured loads run
    equal(host(loaded.params), reference, f"{fmt}: sharded load != unsharded load")
    split = check_placed(loaded.params)
    del loaded
    with Peaks() as sharded:
        loaded = load_model(model_cfg, placement=placement)
        jax.block_until_ready(loaded.params)
    resident = device_bytes()
    model_bytes = nbytes(loaded.params)
    del loaded
    with Peaks() as before:  # the previous route: whole model on one device, then Trainer.place reshards it
        _, params = load_pretrained(checkpoint, dtype=jnp.bfloat16)
        before.sample()  # the whole model on one device: measured here, not left to the sampler's timing
        params = quantize(params, cfg, fmt, double_quant=double_quant)
        params = place(params, placement.shardings(params))
        jax.block_until_ready(params)
    del params
    footprint = load_footprint(cfg, jnp.bfloat16, placement, fmt, double_quant)
    results[fmt] = dict(
        model_bytes=model_bytes, unsharded_bf16_bytes=unsharded_bf16, split_leaves=split,
        resident_per_device=max(resident.values()),
        peak_per_device=max(sharded.dev.values()), peak_rss_growth=sharded.rss - sharded.rss0,
        before_peak_per_device=max(before.dev.values()), before_peak_rss_growth=before.rss - before.rss0,
        predicted_resident_per_device=max(footprint.resident.values()),
        predicted_peak_per_device=footprint.peak_per_device(), predicted_host_bytes=footprint.host_bytes)

gguf_cfg = model_section(path=gguf_file, tokenizer="demo:byte", dtype="bfloat16", quantize="nf4", double_quant=True)
cfg, plain = load_pretrained(gguf_file, dtype=jnp.bfloat16)
equal(host(load_model(gguf_cfg, placement=placement).params), host(quantize(plain, cfg, "nf4", double_quant=True)),
      "gguf: sharded load != unsharded load")
results["gguf_split_leaves"] = check_placed(load_model(gguf_cfg, placement=placement).params)
with open(out_path, "w") as f:
    json.dump(results, f, indent=2)
