"""JAX wrappers for the block-quantized weight kernels (`quant_kernels.cc`).

`matmul(x, w)` multiplies float activations by a `model.quant.BlockQuant` matrix through the
native kernel, which reads the blocks as stored; `reference_matmul` is the same product in plain
JAX (dequantize, then one dot), the path for platforms without the kernels. The caller decides
which one runs (the kernels need `build.available()` and a single CPU device).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from inference_app.model.quant import BlockQuant

TARGETS = {  # (format, layout) -> FFI target
    ("q4_0", "rows"): "inference_app_quant_matmul_q4_0",
    ("q4_1", "rows"): "inference_app_quant_matmul_q4_1",
    ("q8_0", "rows"): "inference_app_quant_matmul_q8_0",
    ("q4_0", "x16"): "inference_app_quant_matmul_q4_0_x16",
    ("q4_1", "x16"): "inference_app_quant_matmul_q4_1_x16",
    ("q8_0", "x16"): "inference_app_quant_matmul_q8_0_x16",
}


def matmul(x: jax.Array, w: BlockQuant, float_from: jax.Array | int | None = None) -> jax.Array:
    """x [M, K] @ w.T (w: N block-quantized rows of K) -> [M, N] float32, on the CPU kernel.

    Rows before `float_from` (default: every row) are rounded to int8 per block of 32 inside the
    kernel, as llama.cpp does for its q8_1 dot products: they differ from `reference_matmul` by
    that rounding only. Rows from `float_from` on (a traced int32 scalar: prompt rows) are
    multiplied by the dequantized weights, in bfloat16 with float32 sums where the library says
    `build.prompt_rows_bf16()`, else in float32.
    """
    if x.ndim != 2 or x.shape[1] != w.cols:
        raise ValueError(f"quant matmul: x {x.shape} does not match {w.rows}x{w.cols} weights")
    out = jax.ShapeDtypeStruct((x.shape[0], w.rows), jnp.float32)
    split = jnp.asarray(x.shape[0] if float_from is None else float_from, jnp.int32).reshape(())
    args = [x.astype(jnp.float32), split, w.qs, w.d]
    if w.fmt == "q4_1":
        args.append(w.m)
    return jax.ffi.ffi_call(TARGETS[w.fmt, w.layout], out)(*args)


def reference_matmul(x: jax.Array, w: BlockQuant) -> jax.Array:
    """The same product in plain JAX with unrounded activations: x @ dequantize(w).T, float32."""
    from inference_app.model.quant import dequantize_jax

    return jnp.matmul(x.astype(jnp.float32), dequantize_jax(w).T, preferred_element_type=jnp.float32)
