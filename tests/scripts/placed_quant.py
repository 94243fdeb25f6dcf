"""``quantize_onto`` equals ``quantize_kernel`` bit for bit on meshes of 8 fake devices (used by tests).

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8; prints one line per case, then "ok".
"""

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxft.quant import quantize_kernel
from jaxft.quant.placed import ARRAYS, quantize_onto
from jaxft.train import mesh as mesh_lib
from jaxft.train.placement import Placement

PATH = ("model", "layers", "mlp", "up_proj", "kernel")
# Stacked kernels with codes split over fsdp (and with maxima split too; shards ending mid-row), a replicated
# small one, and an unstacked one (quantized whole, then placed).
SHAPES = [(4, 256, 1024), (3, 96, 40), (2, 1024, 4096), (2, 1024, 100), (96, 512)]
rng = np.random.default_rng(0)
for mesh_shape in ({"fsdp": 8}, {"data": 2, "fsdp": 2, "tensor": 2}):
    placement = Placement(mesh_lib.make_mesh(mesh_shape))
    for shape in SHAPES:
        host = rng.standard_normal(shape).astype(ml_dtypes.bfloat16)
        for fmt, double_quant in (("nf4", False), ("nf4", True), ("int8", False)):
            placed = quantize_onto(host, lambda name, s, p=placement: p.sharding_for(PATH + (name,), s), fmt, 64,
                                   double_quant)
            whole = quantize_kernel(jnp.asarray(host), fmt, 64, double_quant)
            for name in ARRAYS:
                a, b = getattr(placed, name), getattr(whole, name)
                assert (a is None) == (b is None), name
                if b is None:
                    continue
                assert a.sharding == placement.sharding_for(PATH + (name,), a.shape), name
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{shape} {fmt} {name}")
            print(mesh_shape, shape, fmt, double_quant, placed.codes.sharding.spec, placed.scales.sharding.spec)
print("ok")
