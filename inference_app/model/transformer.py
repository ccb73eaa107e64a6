"""The Llama-family decoder in plain JAX, readable top to bottom.

Parameters are a pytree of arrays whose layouts keep every head group and MLP column local to
one tensor-parallel shard (see `layout` below); checkpoint layouts are converted at the loading
edge (`weights_gguf.py`, `weights_hf.py`), never here.

    params = {
      "embed":  [V, D]                        token embeddings (also the LM head when tied)
      "lm_head": [D, V]                       untied models; for tied float models a transposed
                                              copy of "embed" (faster on XLA:CPU and the row kernel
                                              than the [N, K] table, except from 5 to 63 rows:
                                              `tied_table_is_faster`)
      "final_norm": [D]
      "layers": [ {                           one dict per layer (unrolled: XLA fuses across)
          "attn_norm": [D],
          "wqkv": [D, KVH, G + 2, Dh],        per KV head: its G query heads, then k, then v
          "wo":   [KVH, G, Dh, D],
          "mlp_norm": [D],
          "w_gate_up": [D, 2, F],             gate = [:, 0], up = [:, 1]
          "w_down": [F, D],
      }, ... ]
    }

Any matrix may instead be a `QInt8` (int8 values + per-output-channel fp32 scales, applied
after the matmul) or a `BlockQuant` (llama.cpp's Q4_0/Q4_1/Q8_0 blocks, `model/quant.py`), both
stored output-major [out, in]; a quantized "embed" is then also the tied LM head.

The KV cache per layer is `{"k": [B, KVH, T, Dh], "v": ...}` and, for an int8 cache, also
`"k_scale"`/`"v_scale"`: [B, KVH, T] (one scale per token and head).

One `forward` runs every step (whole prompts, decode steps, decode rows mixed with prompt
chunks): a layer is fixed except for its `Attention`, which the caller passes in and which
alone decides how the step's rows meet the cache (`PromptAttention`, `SlotAttention`,
`RaggedKernelAttention`). Which native CPU kernels the matmuls may call is the static
`KernelChoice` argument; nothing is read from global state while tracing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from inference_app.kernels import ops as cpu_kernels
from inference_app.kernels import quant_ops
from inference_app.kernels.ops import PURE_JAX, KernelChoice
from inference_app.model.config import ModelConfig
from inference_app.model.quant import BlockQuant, dequantize_jax

Params = dict[str, Any]
LayerKV = dict[str, jax.Array]


@partial(jax.tree_util.register_dataclass, data_fields=["q", "scale"], meta_fields=["in_shape", "out_shape"])
@dataclass
class QInt8:
    """Weight-only int8 matrix `w ~= q * scale`, stored transposed and flat: q [out, in].

    Output-major storage makes every output channel one contiguous int8 row, which XLA:CPU
    turns into a fused convert-multiply-reduce that streams 1 byte per weight (a plain
    `x @ q.astype(f32)` would materialise the fp32 copy first). `in_shape`/`out_shape` remember
    the logical shape [*in, *out].
    """

    q: Any  # int8 [prod(out), prod(in)] (numpy on host until the engine places it)
    scale: Any  # float32 [prod(out)]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


Weight = jax.Array | QInt8 | BlockQuant


def quantize_int8(w: np.ndarray, in_dims: int = 1) -> QInt8:
    """Symmetric per-output-channel int8 of `w` [*in, *out] whose first `in_dims` dims contract."""
    w32 = np.asarray(w, np.float32)
    in_shape, out_shape = w32.shape[:in_dims], w32.shape[in_dims:]
    flat = w32.reshape(int(np.prod(in_shape)), int(np.prod(out_shape))).T  # [out, in]
    amax = np.max(np.abs(flat), axis=1, keepdims=True)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.round(flat / scale), -127, 127).astype(np.int8)
    return QInt8(q=np.ascontiguousarray(q), scale=scale[:, 0], in_shape=in_shape, out_shape=out_shape)


def linear(
    x: jax.Array,
    w: Weight,
    n_in: int = 1,
    kernels: KernelChoice = PURE_JAX,
    float_from: jax.Array | None = None,
) -> jax.Array:
    """Contract the last `n_in` dims of x with the first `n_in` dims of w, as one 2-D matmul.

    Flattening both sides (free reshapes of contiguous arrays) keeps XLA from transposing the
    weight on every call. `float_from`: see `block_matmul`.
    """
    lead = x.shape[: x.ndim - n_in]
    if isinstance(w, QInt8):
        y = int8_matmul(x.reshape(-1, int(np.prod(w.in_shape))), w.q, w.scale, kernels)
        return y.reshape(*lead, *w.out_shape)
    if isinstance(w, BlockQuant):
        return block_matmul(x.reshape(-1, w.cols), w, kernels, float_from).reshape(*lead, *w.out_shape)
    in_shape, out_shape = w.shape[:n_in], w.shape[n_in:]
    k = int(np.prod(in_shape))
    x2 = x.reshape(-1, k)
    if w.dtype in (jnp.float32, jnp.bfloat16) and kernels.matmul_rows(x2.shape[0], x.dtype):
        y = cpu_kernels.matmul_dense(x2, w.reshape(k, -1)).astype(x.dtype)
    else:  # f32 accumulation: also what lets XLA:CPU run a bf16 dot natively instead of upcasting
        y = jnp.matmul(x2, w.reshape(k, -1).astype(x.dtype), preferred_element_type=jnp.float32).astype(
            x.dtype
        )
    return y.reshape(*lead, *out_shape)


# Rows of int8 weight per fused matrix-vector product; XLA:CPU stops fusing the int8 -> float
# convert into the dot for much larger operands (the 49152-row LM head), so split those.
INT8_CHUNK_ROWS = 8192


def int8_matmul(x: jax.Array, q: jax.Array, scale: jax.Array, kernels: KernelChoice = PURE_JAX) -> jax.Array:
    """x [N, in] @ (q [out, in] * scale [out]).T -> [N, out] in x's dtype.

    One row (batch-1 decode, memory bound): the convert fuses into a matrix-vector loop that
    reads int8 directly. Several rows (compute bound): convert once behind an optimisation
    barrier so XLA runs a real GEMM instead of a slow fused loop nest. On a single CPU device
    with the native kernels chosen, a few rows go to `cpu_kernels.matmul_s8` instead, and more
    rows to one GEMM that YNNPACK fuses with the convert.
    """
    if kernels.matmul_rows(x.shape[0], x.dtype):
        return cpu_kernels.matmul_s8(x, q, scale).astype(x.dtype)
    if kernels.cpu:  # the engine compiles int8 CPU steps with YNNPACK dot fusions,
        y = x @ q.T.astype(x.dtype)  # which fuse this convert into the GEMM
    elif x.shape[0] == 1:
        parts = [
            x @ q[i : i + INT8_CHUNK_ROWS].T.astype(x.dtype) for i in range(0, q.shape[0], INT8_CHUNK_ROWS)
        ]
        y = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
    else:
        y = x @ jax.lax.optimization_barrier(q.astype(x.dtype)).T
    return y * scale.astype(x.dtype)


def block_matmul(
    x: jax.Array, w: BlockQuant, kernels: KernelChoice = PURE_JAX, float_from: jax.Array | None = None
) -> jax.Array:
    """x [N, in] @ w.T for block-quantized w [out rows of in] -> [N, out] in x's dtype.

    With the native CPU kernels, every row count goes to the kernel that reads the blocks as
    stored. It quantizes the activations per block, as llama.cpp does, except rows from
    `float_from` on (an int32 scalar; None: no row), which it multiplies by the dequantized
    weights in bfloat16 with float32 sums (CPUs with AVX512_BF16) or in float32: a step's prompt
    rows, kept closer to the float model. Elsewhere the blocks are dequantized in the traced
    program and multiplied by XLA.
    """
    if kernels.cpu:
        return quant_ops.matmul(x, w, float_from).astype(x.dtype)
    y = jnp.matmul(x, dequantize_jax(w, x.dtype).T, preferred_element_type=jnp.float32)
    return y.astype(x.dtype)


def rms_norm(
    x: jax.Array, weight: jax.Array, eps: float, fixed_order: bool = False, kernels: KernelChoice = PURE_JAX
) -> jax.Array:
    """`fixed_order`: a row's result does not depend on the step's row count, for activations that
    are rounded next (`rounds_activations`): the native kernel where the engine uses them, else
    `row_sum`. Off, XLA's own reduction: the difference is in the last bits, and `row_sum` was a
    third of a 30-layer model's compile time (12.6 s of a 40.7 s warm-up, 8 step shapes)."""
    if fixed_order and kernels.cpu:
        return cpu_kernels.rms_norm(x, weight, eps).astype(x.dtype)
    x32 = x.astype(jnp.float32)
    sq = x32 * x32
    mean_sq = (row_sum(sq) if fixed_order else jnp.sum(sq, axis=-1)) / x.shape[-1]
    y = x32 * jax.lax.rsqrt(mean_sq[..., None] + eps)
    return (y * weight.astype(jnp.float32)).astype(x.dtype)


def rounds_activations(*weights: Any) -> bool:
    """Whether a matmul of these weights rounds its activations (the block kernels take them as
    int8), so that a last-bit difference upstream can become a visibly different result."""
    return any(isinstance(w, BlockQuant) for w in weights)


def row_sum(x: jax.Array) -> jax.Array:
    """Sum over the last axis in an order fixed by its width alone, whatever the row count.

    XLA:CPU vectorizes a row reduction across rows once there are 8 or more, which changes the
    order of the additions: a row's norm then differs in its last bits between a step of 1 row
    and a step of 64. With float weights that is noise (logprobs ~1e-5 apart), but the block
    kernels round activations to int8, which turned it into different greedy tokens for 5 of 16
    prompts alone vs together. Halving (elementwise adds, exact per element) keeps each row's
    sum independent of the others.
    """
    while x.shape[-1] > 8 and x.shape[-1] % 2 == 0:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    total = x[..., 0]
    for i in range(1, x.shape[-1]):
        total = total + x[..., i]
    return total


def rope_tables(positions: jax.Array, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
    """cos, sin [..., S, Dh/2] at integer positions [..., S]; computed once, shared by all layers."""
    inv = jnp.asarray(cfg.inv_freq())  # [Dh/2]
    ang = positions.astype(jnp.float32)[..., None] * inv
    return jnp.cos(ang), jnp.sin(ang)


def rope(x: jax.Array, tables: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Rotate halves (HF layout) of x [..., S, heads..., Dh] by `rope_tables` of its positions."""
    cos, sin = tables
    extra = x.ndim - cos.ndim  # head axes between S and Dh
    cos = cos.reshape(cos.shape[:-1] + (1,) * extra + cos.shape[-1:])
    sin = sin.reshape(sin.shape[:-1] + (1,) * extra + sin.shape[-1:])
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def embed(params: Params, tokens: jax.Array, dtype: jnp.dtype) -> jax.Array:
    table = params["embed"]
    if isinstance(table, QInt8):  # per-row scales: rows are the LM head's output channels
        return (table.q[tokens].astype(jnp.float32) * table.scale[tokens][..., None]).astype(dtype)
    if isinstance(table, BlockQuant):  # blocks run along a row: gather whole rows, then expand
        flat = tokens.reshape(-1)
        rows = BlockQuant(
            qs=table.qs[flat],
            d=table.d[flat],
            m=None if table.m is None else table.m[flat],
            fmt=table.fmt,
            in_shape=table.in_shape,
            out_shape=(flat.shape[0],),
        )
        return dequantize_jax(rows, dtype).reshape(*tokens.shape, table.cols)
    return table[tokens].astype(dtype)


def lm_head(
    params: Params,
    cfg: ModelConfig,
    x: jax.Array,
    kernels: KernelChoice = PURE_JAX,
    float_from: jax.Array | None = None,
) -> jax.Array:
    """Logits in fp32 from final hidden states x [..., D] (`float_from`: see `forward`)."""
    fixed = rounds_activations(params.get("lm_head", params["embed"]))
    x = rms_norm(x, params["final_norm"], cfg.rms_eps, fixed, kernels)
    # tied (int8 tables are already in the fast [out, in] layout; float ones keep a copy for the rest)
    if "lm_head" not in params or tied_table_is_faster(params, cfg, x, kernels):
        table = params["embed"]
        if isinstance(table, QInt8):
            lead = x.shape[:-1]
            logits = int8_matmul(x.reshape(-1, x.shape[-1]), table.q, table.scale, kernels).reshape(*lead, -1)
        elif isinstance(table, BlockQuant):
            logits = linear(x, table, 1, kernels, float_from)
        else:
            logits = jnp.einsum("...d,vd->...v", x, table.astype(x.dtype))
    else:
        logits = linear(x, params["lm_head"], 1, kernels, float_from)
    return logits.astype(jnp.float32)


TIED_TABLE_MAX_ROWS = 64  # from here XLA:CPU's dot against the [D, V] copy is as fast or faster


def tied_table_is_faster(params: Params, cfg: ModelConfig, x: jax.Array, kernels: KernelChoice) -> bool:
    """Whether a tied float32 head should multiply by the [V, D] table rather than its [D, V] copy.

    The copy serves the native kernel (up to `MAX_KERNEL_ROWS` rows). Above that, on one CPU
    device, XLA's dot against the table ran 1.7-2.2x faster from 8 to 48 rows (SmolLM2's 576 x
    49152 head on 2 cores: 23-35 ms against 38-79 ms), and no faster from 64 (44 against 42 ms).
    """
    rows = int(np.prod(x.shape[:-1]))
    return (
        cfg.tie_embeddings
        and kernels.cpu
        and not kernels.matmul_rows(rows, x.dtype)
        and rows < TIED_TABLE_MAX_ROWS
        and jnp.dtype(x.dtype) == jnp.float32  # measured there; bf16 keeps linear's f32 accumulation
        and not isinstance(params["embed"], QInt8 | BlockQuant)
        and jnp.dtype(params["embed"].dtype) == jnp.float32
    )


def mlp(
    layer: Params, x: jax.Array, kernels: KernelChoice = PURE_JAX, float_from: jax.Array | None = None
) -> jax.Array:
    gu = linear(x, layer["w_gate_up"], 1, kernels, float_from)  # [..., 2, F]
    h = jax.nn.silu(gu[..., 0, :]) * gu[..., 1, :]
    return linear(h, layer["w_down"], 1, kernels, float_from)


def qkv(
    layer: Params,
    cfg: ModelConfig,
    x: jax.Array,
    kernels: KernelChoice = PURE_JAX,
    float_from: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Project x [..., D] to q [..., KVH, G, Dh] and k, v [..., KVH, Dh] (before RoPE)."""
    y = linear(x, layer["wqkv"], 1, kernels, float_from)
    g = cfg.group_size
    return y[..., :g, :], y[..., g, :], y[..., g + 1, :]


def rotated_qkv(
    layer: Params,
    cfg: ModelConfig,
    x: jax.Array,
    tables: tuple[jax.Array, jax.Array],
    kernels: KernelChoice = PURE_JAX,
    float_from: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`qkv` with RoPE applied to q and k. On float32 rows with the native kernels, the split and
    the rotation are one pass (`ops.rope_qkv`, the same bits as `rope`)."""
    if not (kernels.cpu and x.dtype == jnp.float32):
        q, k, v = qkv(layer, cfg, x, kernels, float_from)
        return rope(q, tables), rope(k, tables), v
    y = linear(x, layer["wqkv"], 1, kernels, float_from)  # [..., KVH, G + 2, Dh]
    lead, (cos, sin) = y.shape[:-3], tables
    flat = cpu_kernels.rope_qkv(
        y.reshape(-1, *y.shape[-3:]), cos.reshape(-1, cos.shape[-1]), sin.reshape(-1, sin.shape[-1])
    )
    q, k, v = (a.reshape(*lead, *a.shape[1:]) for a in flat)
    return q, k, v


# ---- attention: the one variable part of a layer --------------------------------------------


class Attention(Protocol):
    """How a step's token rows meet the KV cache; everything else in a layer is fixed.

    Called once per layer with the rows' q [..., KVH, G, Dh] and k, v [..., KVH, Dh] (RoPE
    applied) and that layer's cache; returns the attention output [..., KVH, G, Dh] in q's dtype
    and the layer's cache after the step. An implementation owns the cache layout it reads and
    writes (slot-major here; a paged layout with block tables is one more implementation) and
    the kernel that runs; its fields (row metadata, static lengths) are fixed while tracing.
    """

    def __call__(
        self, q: jax.Array, k: jax.Array, v: jax.Array, cache: LayerKV
    ) -> tuple[jax.Array, LayerKV]: ...


@dataclass(frozen=True)
class PromptAttention:
    """Whole prompts [B, S] attend causally among themselves (prefill). The layer's cache comes
    in empty and goes out as the prompts' own KV, {"k", "v"}: [B, KVH, S, Dh], which `insert`
    later writes into a slot."""

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, cache: LayerKV) -> tuple[jax.Array, LayerKV]:
        dtype = q.dtype  # q [B,S,K,G,Dh]  k,v [B,S,K,Dh]
        s = q.shape[1]
        causal = jnp.tril(jnp.ones((s, s), dtype=bool))  # [S(query), S(key)]
        scale = 1.0 / np.sqrt(q.shape[-1])
        scores = jnp.einsum("bskgh,btkh->bkgst", q, k, preferred_element_type=jnp.float32) * scale
        scores = jnp.where(causal, scores, -jnp.inf)
        probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
        out = jnp.einsum("bkgst,btkh->bskgh", probs, v, preferred_element_type=jnp.float32).astype(dtype)
        return out, {"k": k.transpose(0, 2, 1, 3), "v": v.transpose(0, 2, 1, 3)}


@dataclass(frozen=True)
class SlotAttention:
    """Row b is the next token of slot b (a decode step over the first B slots), in pure JAX:
    any platform and mesh, and float, bfloat16 or int8 (+ scales) caches.

    Each row's K/V is written at its slot's own position; attention reads only the first
    `valid.shape[1]` cache entries (a static bucket >= every position + 1) and masks those
    after the row's position, so stale entries from earlier occupants never count. Slots
    beyond B are neither read nor written.
    """

    positions: jax.Array  # int32 [B]
    valid: jax.Array  # bool [B, T]: entry t counts for row b

    @classmethod
    def up_to(cls, positions: jax.Array, length: int) -> SlotAttention:
        """Rows at `positions` attending to cache entries [0, length) up to their own position."""
        return cls(positions, jnp.arange(length)[None, :] <= positions[:, None])

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, cache: LayerKV) -> tuple[jax.Array, LayerKV]:
        b, attn_len = self.valid.shape  # q [B,K,G,Dh]  k,v [B,K,Dh]
        dtype = q.dtype
        c = write_kv(cache, jnp.arange(b), self.positions, k, v)
        kc, vc = c["k"][:b, :, :attn_len], c["v"][:b, :, :attn_len]  # [B, K, T, Dh]
        scores = jnp.einsum("bkgh,bkth->bkgt", q, kc.astype(dtype)).astype(jnp.float32)
        if "k_scale" in c:
            scores = scores * c["k_scale"][:b, :, None, :attn_len]
        scores = jnp.where(self.valid[:, None, None, :], scores * (1.0 / np.sqrt(q.shape[-1])), -jnp.inf)
        probs = jax.nn.softmax(scores, axis=-1)
        if "v_scale" in c:
            probs = probs * c["v_scale"][:b, :, None, :attn_len]
        return jnp.einsum("bkgt,bkth->bkgh", probs.astype(dtype), vc.astype(dtype)), c


@dataclass(frozen=True)
class RaggedKernelAttention:
    """Row n is a token of slot slots[n] at positions[n]: a decode token, or one token of a prompt
    chunk (consecutive positions; later chunks continue where earlier steps stopped). Every
    row's K/V is written first, then the native CPU kernel reads each row's own prefix
    0..positions[n] in place, which plain XLA could only do by gathering a copy per row. Rows
    with an out-of-range slot or position are padding (no write, zero output).

    Needs a float32 cache on one CPU device with the kernels built (`KernelChoice.cpu`).
    """

    slots: jax.Array  # int32 [N]
    positions: jax.Array  # int32 [N]

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, cache: LayerKV) -> tuple[jax.Array, LayerKV]:
        if cache["k"].dtype != jnp.float32:
            raise RuntimeError("the CPU attention kernel reads a float32 KV cache")
        c = write_kv(cache, self.slots, self.positions, k, v)
        scale = 1.0 / np.sqrt(q.shape[-1])
        out = cpu_kernels.attention(q, c["k"], c["v"], self.slots, self.positions, scale)
        return out.astype(q.dtype), c


# ---- the decoder ----------------------------------------------------------------------------


def decoder_layer(
    layer: Params,
    cfg: ModelConfig,
    x: jax.Array,
    tables: tuple[jax.Array, jax.Array],
    attention: Attention,
    cache: LayerKV,
    kernels: KernelChoice,
    float_from: jax.Array | None = None,
) -> tuple[jax.Array, LayerKV]:
    """One pre-norm block on rows x [..., D]: attention (the variable part), then SwiGLU."""
    fixed = rounds_activations(*layer.values())
    h = rms_norm(x, layer["attn_norm"], cfg.rms_eps, fixed, kernels)
    q, k, v = rotated_qkv(layer, cfg, h, tables, kernels, float_from)  # q [..., K, G, Dh]  k, v [..., K, Dh]
    attn, cache = attention(q, k, v, cache)
    x = x + linear(attn, layer["wo"], 3, kernels, float_from)
    x = x + mlp(layer, rms_norm(x, layer["mlp_norm"], cfg.rms_eps, fixed, kernels), kernels, float_from)
    return x, cache


def forward(
    params: Params,
    cfg: ModelConfig,
    tokens: jax.Array,
    positions: jax.Array,
    attention: Attention,
    cache: Sequence[LayerKV],
    kernels: KernelChoice = PURE_JAX,
    float_from: jax.Array | None = None,
) -> tuple[jax.Array, list[LayerKV]]:
    """Final hidden states [..., D] of token rows `tokens` [...] at `positions` [...], and the
    cache after the step (one entry per layer).

    The one forward for prefill, decode and mixed steps (as gpt-fast runs both through one):
    `attention` decides how rows meet the cache; `kernels` which native kernels the matmuls
    may use. Callers pick the rows whose logits they need before `lm_head` (it is the largest
    matmul of a decode step). `float_from` (int32 scalar): the first prompt row of the
    flattened rows, when decode rows come first; block-quantized matrices multiply the rows
    from there on without rounding them to int8 (`block_matmul`). A row's path depends only on whether it is a
    prompt or a decode row, never on the other rows of its step, so batching keeps its bits.
    """
    x = embed(params, tokens, _compute_dtype(params))
    tables = rope_tables(positions, cfg)  # shared by all layers
    out: list[LayerKV] = []
    for layer, c in zip(params["layers"], cache, strict=True):
        x, c = decoder_layer(layer, cfg, x, tables, attention, c, kernels, float_from)
        out.append(c)
    return x, out


def prefill(
    params: Params,
    cfg: ModelConfig,
    tokens: jax.Array,
    lengths: jax.Array,
    *,
    kernels: KernelChoice = PURE_JAX,
    all_logits: bool = False,
    as_decode_rows: bool = False,
) -> tuple[jax.Array, list[LayerKV]]:
    """Run whole prompts tokens [B, S] (right-padded; real lengths [B]).

    Returns the logits of each prompt's last real token [B, V] (or of every position
    [B, S, V] with `all_logits`) and the prompts' KV, per layer {"k","v"}: [B, KVH, S, Dh].
    The rows are prompt rows (`forward`'s `float_from`); `as_decode_rows` computes them as
    decode rows instead (what teacher-forced checks of generated text need).
    """
    b, s = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    empty: list[LayerKV] = [{} for _ in params["layers"]]
    float_from = None if as_decode_rows else jnp.zeros((), jnp.int32)
    x, kv = forward(params, cfg, tokens, positions, PromptAttention(), empty, kernels, float_from)
    if all_logits:
        return lm_head(params, cfg, x, kernels, float_from), kv
    last = jnp.take_along_axis(x, (lengths - 1)[:, None, None], axis=1)[:, 0]  # [B, D]
    return lm_head(params, cfg, last, kernels, float_from), kv


# ---- the KV cache ---------------------------------------------------------------------------


def quantize_kv(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """int8 per (token, head) over Dh: x [..., Dh] -> (q [..., Dh], scale [...])."""
    x32 = x.astype(jnp.float32)
    amax = jnp.max(jnp.abs(x32), axis=-1)
    scale = jnp.where(amax > 0, amax / 127.0, 1.0)
    q = jnp.clip(jnp.round(x32 / scale[..., None]), -127, 127).astype(jnp.int8)
    return q, scale


def write_kv(c: LayerKV, slots: jax.Array, positions: jax.Array, k: jax.Array, v: jax.Array) -> LayerKV:
    """Scatter token rows' k, v [N, K, Dh] into cache entries [slots[n], :, positions[n]] (in
    place); rows with an out-of-range slot or position (padding) write nothing."""
    out = dict(c)
    if "k_scale" in c:
        kq, ks = quantize_kv(k)
        vq, vs = quantize_kv(v)
        out["k"] = c["k"].at[slots, :, positions].set(kq, mode="drop")
        out["v"] = c["v"].at[slots, :, positions].set(vq, mode="drop")
        out["k_scale"] = c["k_scale"].at[slots, :, positions].set(ks, mode="drop")
        out["v_scale"] = c["v_scale"].at[slots, :, positions].set(vs, mode="drop")
    else:
        out["k"] = c["k"].at[slots, :, positions].set(k.astype(c["k"].dtype), mode="drop")
        out["v"] = c["v"].at[slots, :, positions].set(v.astype(c["v"].dtype), mode="drop")
    return out


def _compute_dtype(params: Params) -> jnp.dtype:
    """Activations follow the norm weights' dtype (fp32 on CPU, bf16 on TPU/GPU)."""
    return jnp.dtype(params["final_norm"].dtype)
