"""JAX wrappers for the CPU kernels, and `KernelChoice`: which of them a traced function may call.

The model stays pure JAX unless told otherwise: `linear`, `int8_matmul` and greedy sampling take
a `KernelChoice` as a static argument (part of the jit cache key, never state read while
tracing). The engine passes `NATIVE_CPU` to the functions it jits for a single-device CPU mesh
once `build.available()` says the library loaded; sharded meshes, TPUs and GPUs get `PURE_JAX`.
Attention picks its kernel the same way, by the attention implementation the engine passes to
the model (see `model/transformer.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

# Largest row count sent to the matrix kernels: up to here a step is bound by streaming the
# weights (which the kernels do at full bandwidth on all cores); beyond it, by arithmetic, where
# XLA's GEMMs (YNNPACK) win.
MAX_KERNEL_ROWS = 4


@dataclass(frozen=True)
class KernelChoice:
    """Which native kernels traced code may call; hashable, so it is a static jit argument.

    `cpu`: the kernels of `cpu_kernels.cc` and `quant_kernels.cc` (one library: one CPU device,
    library loaded); block-quantized matrices then go to their kernel at every row count (see
    `transformer.block_matmul`), float and int8 ones only up to `MAX_KERNEL_ROWS`. With int8 weights
    the engine then also compiles with YNNPACK dot fusions (see `engine/policy.py`), which
    `int8_matmul` relies on for its many-row GEMMs.
    """

    cpu: bool = False

    def matmul_rows(self, rows: int, dtype: jnp.dtype) -> bool:
        """Whether a matmul of `rows` activation rows of `dtype` goes to a CPU matrix kernel."""
        return self.cpu and rows <= MAX_KERNEL_ROWS and jnp.dtype(dtype) in (jnp.float32, jnp.bfloat16)


PURE_JAX = KernelChoice()
NATIVE_CPU = KernelChoice(cpu=True)


def matmul_s8(x: jax.Array, q: jax.Array, scale: jax.Array) -> jax.Array:
    """x [M, K] f32 @ (q [N, K] int8 * scale [N]).T -> [M, N] f32."""
    out = jax.ShapeDtypeStruct((x.shape[0], q.shape[0]), jnp.float32)
    return jax.ffi.ffi_call("inference_app_cpu_matmul_s8", out)(
        x.astype(jnp.float32), q, scale.astype(jnp.float32)
    )


def matmul_dense(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [M, K] @ w [K, N] (float32 or bfloat16 weights) with float32 accumulation -> [M, N] f32."""
    target = "inference_app_cpu_matmul_bf16" if w.dtype == jnp.bfloat16 else "inference_app_cpu_matmul_f32"
    out = jax.ShapeDtypeStruct((x.shape[0], w.shape[1]), jnp.float32)
    return jax.ffi.ffi_call(target, out)(x.astype(jnp.float32), w.astype(w.dtype))


def attention(
    q: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    slots: jax.Array,
    positions: jax.Array,
    scale: float,
) -> jax.Array:
    """q [N, KVH, G, D]; caches [S, KVH, T, D]; row n attends to entries 0..positions[n] of slot
    slots[n] (a row with an out-of-range slot or position is padding and gets zeros).

    Reads the cache in place (no sliced copy) and only up to each row's own position, so one
    kernel serves decode rows and the rows of a prompt chunk alike.
    """
    out = jax.ShapeDtypeStruct(q.shape, jnp.float32)
    return jax.ffi.ffi_call("inference_app_cpu_attention", out)(
        q.astype(jnp.float32),
        k_cache,
        v_cache,
        slots.astype(jnp.int32),
        positions.astype(jnp.int32),
        scale=np.float32(scale),
    )


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    """RMSNorm of each row of x [..., D] by w [D] in float32, each row summed alone in one fixed
    order: a row's bits do not depend on the row count (`cpu_kernels.cc`)."""
    out = jax.ShapeDtypeStruct(x.shape, jnp.float32)
    return jax.ffi.ffi_call("inference_app_cpu_rms_norm", out)(
        x.astype(jnp.float32), w.astype(jnp.float32), eps=np.float32(eps)
    )


def rope_qkv(y: jax.Array, cos: jax.Array, sin: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The fused QKV projection y [N, KVH, G + 2, D] split into q [N, KVH, G, D], k and v
    [N, KVH, D], q and k rotated by cos, sin [N, D/2] (`transformer.rope`'s arithmetic), float32."""
    n, kvh, g2, d = y.shape
    outs = (
        jax.ShapeDtypeStruct((n, kvh, g2 - 2, d), jnp.float32),
        jax.ShapeDtypeStruct((n, kvh, d), jnp.float32),
        jax.ShapeDtypeStruct((n, kvh, d), jnp.float32),
    )
    q, k, v = jax.ffi.ffi_call("inference_app_cpu_rope_qkv", outs)(
        y.astype(jnp.float32), cos.astype(jnp.float32), sin.astype(jnp.float32)
    )
    return q, k, v


def argmax(x: jax.Array) -> jax.Array:
    """First index of each row's maximum: x [M, N] f32 -> int32 [M] (XLA's reduce is ~10x slower)."""
    out = jax.ShapeDtypeStruct((x.shape[0],), jnp.int32)
    return jax.ffi.ffi_call("inference_app_cpu_argmax", out)(x.astype(jnp.float32))


def paged_attention(
    q: jax.Array,
    kv_pages: jax.Array,
    block_tables: jax.Array,
    slots: jax.Array,
    positions: jax.Array,
    scale: float,
) -> jax.Array:
    """q [N, KVH, G, D]; kv_pages [P, 2*KVH, BS, D] (block p: K of head h in slab 2h, V in
    2h + 1); block_tables [S, MB]: row n attends to tokens 0..positions[n] of sequence slots[n],
    whose token t lives in block block_tables[slots[n], t // BS] at offset t % BS.

    Rows with an out-of-range slot or position, or whose block-table entries up to that position
    name no block, are padding and get zeros. Reads the blocks in place.
    """
    out = jax.ShapeDtypeStruct(q.shape, jnp.float32)
    return jax.ffi.ffi_call("inference_app_cpu_paged_attention", out)(
        q.astype(jnp.float32),
        kv_pages,
        block_tables.astype(jnp.int32),
        slots.astype(jnp.int32),
        positions.astype(jnp.int32),
        scale=np.float32(scale),
    )
