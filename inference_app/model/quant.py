"""Block-quantized weight matrices in llama.cpp's formats (Q4_0, Q4_1, Q8_0), kept as stored.

Where it sits: a checkpoint loader produces `BlockQuant` matrices (a GGUF file's tensors as
stored, only their rows reordered into our fused layouts; other checkpoints quantized at load
with `quantize`), `linear` in `model/transformer.py` multiplies by them, and on a CPU the native
kernel (`kernels/quant_ops.py`) reads the blocks directly, so a decode step streams 4.5-8.5 bits
per weight instead of 32. Elsewhere (TPU, GPU, no compiler) they are dequantized in JAX.

Each format splits every output row into blocks of 32 inputs with their own scale (Q4_1 also a
minimum); the bits are GGUF's, stored as separate arrays instead of interleaved structs:

    q4_0: w = d * (nibble - 8)   qs uint8 [N, K/2]  d float16 [N, K/32]
    q4_1: w = d * nibble + m     qs uint8 [N, K/2]  d, m float16 [N, K/32]
    q8_0: w = d * q              qs int8  [N, K]    d float16 [N, K/32]

Nibbles follow GGUF: byte j of a block holds input j (low half) and input j + 16 (high half).
The numpy (de)quantization here is the tests' reference for the kernels; `quantize` is the
`gguf` package's (bit-identical to llama.cpp's reference quantizer), dequantization our own,
checked against `gguf` in the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import quantize as gguf_quantize

BLOCK = 32  # inputs per block, all three formats

Format = Literal["q4_0", "q4_1", "q8_0"]
FORMATS: tuple[Format, ...] = ("q4_0", "q4_1", "q8_0")
# "rows": as GGUF stores them (row n's blocks in order). "x16": rows interleaved in groups of 16
# by 4-byte word for the native kernel (`pack16`; kernels/quant_kernels.cc, "Packed").
Layout = Literal["rows", "x16"]
PACK_ROWS = 16
GGML_TYPES: dict[Format, GGMLQuantizationType] = {
    "q4_0": GGMLQuantizationType.Q4_0,
    "q4_1": GGMLQuantizationType.Q4_1,
    "q8_0": GGMLQuantizationType.Q8_0,
}


def format_of(ggml_type: GGMLQuantizationType) -> Format | None:
    """Our name for a GGUF tensor type, or None when it is not one of the block formats here."""
    for name, t in GGML_TYPES.items():
        if t == ggml_type:
            return name
    return None


@jax.tree_util.register_dataclass
@dataclass
class BlockQuant:
    """A matrix [*in_shape] x [*out_shape] stored output-major as blocks: N = prod(out_shape)
    rows of K = prod(in_shape) inputs (K a multiple of 32). `m` is None except for q4_1.

    Arrays are numpy on the host until the engine places them; `fmt` and the shapes are static
    (pytree metadata), so a jitted function specialises on the format.
    """

    qs: Any  # uint8 [N, K/2] (q4_0, q4_1) or int8 [N, K] (q8_0)
    d: Any  # float16 [N, K/32]
    m: Any  # float16 [N, K/32] (q4_1) or None
    fmt: Format = field(metadata={"static": True})
    in_shape: tuple[int, ...] = field(metadata={"static": True})
    out_shape: tuple[int, ...] = field(metadata={"static": True})
    layout: Layout = field(default="rows", metadata={"static": True})

    @property
    def rows(self) -> int:
        return int(np.prod(self.out_shape))

    @property
    def cols(self) -> int:
        return int(np.prod(self.in_shape))

    @property
    def nbytes(self) -> int:
        return sum(int(a.size) * a.dtype.itemsize for a in (self.qs, self.d, self.m) if a is not None)


def _check_fmt(fmt: str) -> Format:
    if fmt not in FORMATS:
        raise ValueError(f"unknown block format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return fmt


def _block_bytes(fmt: Format) -> int:
    return {"q4_0": 18, "q4_1": 20, "q8_0": 34}[fmt]


def from_gguf_rows(
    raw: np.ndarray, fmt: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> BlockQuant:
    """Split GGUF block structs, raw uint8 [N, K/32 * block bytes], into a `BlockQuant`."""
    fmt = _check_fmt(fmt)
    n, k = int(np.prod(out_shape)), int(np.prod(in_shape))
    nb = k // BLOCK
    if k % BLOCK or raw.shape != (n, nb * _block_bytes(fmt)):
        raise ValueError(
            f"{fmt} rows: expected uint8 [{n}, {nb * _block_bytes(fmt)}] for {k} inputs, got {raw.shape}"
        )
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(n, nb, _block_bytes(fmt))
    d = np.ascontiguousarray(blocks[:, :, 0:2]).view(np.float16).reshape(n, nb)
    m = None
    qs: np.ndarray
    if fmt == "q4_1":
        m = np.ascontiguousarray(blocks[:, :, 2:4]).view(np.float16).reshape(n, nb)
        qs = np.ascontiguousarray(blocks[:, :, 4:]).reshape(n, k // 2)
    elif fmt == "q4_0":
        qs = np.ascontiguousarray(blocks[:, :, 2:]).reshape(n, k // 2)
    else:
        qs = np.ascontiguousarray(blocks[:, :, 2:]).view(np.int8).reshape(n, k)
    return BlockQuant(qs=qs, d=d, m=m, fmt=fmt, in_shape=tuple(in_shape), out_shape=tuple(out_shape))


def to_gguf_rows(w: BlockQuant) -> np.ndarray:
    """The inverse of `from_gguf_rows`: GGUF block structs, uint8 [N, K/32 * block bytes]."""
    n, nb = w.rows, w.cols // BLOCK
    parts = [np.asarray(w.d, np.float16).reshape(n, nb, 1).view(np.uint8)]
    if w.m is not None:
        parts.append(np.asarray(w.m, np.float16).reshape(n, nb, 1).view(np.uint8))
    parts.append(np.asarray(w.qs).view(np.uint8).reshape(n, nb, -1))
    return np.concatenate(parts, axis=-1).reshape(n, -1)


def quantize(w: np.ndarray, fmt: str, in_dims: int = 1) -> BlockQuant:
    """Quantize `w` [*in, *out] (its first `in_dims` dims contract) as llama.cpp would."""
    fmt = _check_fmt(fmt)
    w32 = np.asarray(w, np.float32)
    in_shape, out_shape = tuple(w32.shape[:in_dims]), tuple(w32.shape[in_dims:])
    k = int(np.prod(in_shape))
    if k % BLOCK:
        raise ValueError(f"{fmt} needs a multiple of {BLOCK} inputs per row, got {k} (shape {w32.shape})")
    rows = np.ascontiguousarray(w32.reshape(k, -1).T)  # [N, K]
    raw = gguf_quantize(rows, GGML_TYPES[fmt])
    return from_gguf_rows(raw, fmt, in_shape, out_shape)


def _nibbles(qs: np.ndarray, n: int, nb: int) -> np.ndarray:
    """uint8 [N, K/2] -> the 4-bit values [N, K] in input order (low halves first per block)."""
    b = qs.reshape(n, nb, BLOCK // 2)
    return np.concatenate([b & 0x0F, b >> 4], axis=-1).reshape(n, nb * BLOCK)


def packable(w: BlockQuant) -> bool:
    """Whether `pack16` applies: a matrix in row layout with whole groups of 16 rows."""
    return w.layout == "rows" and w.rows % PACK_ROWS == 0


def _words(w: BlockQuant) -> int:
    """4-byte words per block of one row: 4 (q4_x: 16 bytes of nibbles), 8 (q8_0)."""
    return 8 if w.fmt == "q8_0" else 4


def _relayout(w: BlockQuant, layout: Layout) -> BlockQuant:
    """w's arrays moved between the row layout and the 16-row one (numpy): the bytes as
    [groups, 16 rows, blocks, words, 4] <-> [groups, blocks, words, 16 rows, 4], the scales as
    [groups, 16 rows, blocks] <-> [groups, blocks, 16 rows]; shapes stay [N, ...]."""
    n, nb, words = w.rows, w.cols // BLOCK, _words(w)
    g = n // PACK_ROWS
    packing = layout == "x16"
    qs_shape = (g, PACK_ROWS, nb, words, 4) if packing else (g, nb, words, PACK_ROWS, 4)
    qs = np.asarray(w.qs).reshape(qs_shape).transpose((0, 2, 3, 1, 4) if packing else (0, 3, 1, 2, 4))

    def scales(a: Any) -> np.ndarray:
        shape = (g, PACK_ROWS, nb) if packing else (g, nb, PACK_ROWS)
        return np.ascontiguousarray(np.asarray(a).reshape(shape).transpose(0, 2, 1).reshape(n, nb))

    return BlockQuant(
        qs=np.ascontiguousarray(qs.reshape(n, -1)),
        d=scales(w.d),
        m=None if w.m is None else scales(w.m),
        fmt=w.fmt,
        in_shape=w.in_shape,
        out_shape=w.out_shape,
        layout=layout,
    )


def pack16(w: BlockQuant) -> BlockQuant:
    """The same matrix with its rows interleaved in groups of 16 by 4-byte word (numpy): qs as
    [N/16][K/32][words][16][4] bytes (4 words per block for q4_x, 8 for q8_0), d and m as
    [N/16][K/32][16], each kept in its [N, ...] shape. The native kernel's decode rows then take
    16 outputs per instruction."""
    if not packable(w):
        raise ValueError(f"pack16: needs rows in groups of {PACK_ROWS}, got {w.rows} ({w.layout} layout)")
    return _relayout(w, "x16")


def unpack16(w: BlockQuant) -> BlockQuant:
    """`pack16` undone (numpy)."""
    return _relayout(w, "rows") if w.layout == "x16" else w


def pack_matrices(params: dict[str, Any]) -> dict[str, Any]:
    """`pack16` on every packable matrix the native kernel multiplies: each layer's and the LM
    head. "embed" itself stays in row layout (the embedding lookup gathers its rows), so a tied
    block-quantized table gets a packed copy as "lm_head" (SmolLM2's Q8_0 table: 30 MB), which
    `transformer.lm_head` then multiplies by. Results are numpy."""

    def pack(x: Any) -> Any:
        return pack16(x) if isinstance(x, BlockQuant) and packable(x) else x

    out = dict(params)
    out["layers"] = [{name: pack(w) for name, w in layer.items()} for layer in params["layers"]]
    head = params.get("lm_head", params["embed"])
    if isinstance(head, BlockQuant) and packable(head):
        out["lm_head"] = pack16(head)
    return out


def _rows_layout(w: BlockQuant, what: str) -> None:
    if w.layout != "rows":
        raise ValueError(f"{what}: the {w.layout} layout is the native kernel's; unpack16 it first")


def dequantize(w: BlockQuant) -> np.ndarray:
    """float32 [N, K] (output-major rows) of a block-quantized matrix, in numpy."""
    w = unpack16(w)
    n, nb = w.rows, w.cols // BLOCK
    d = np.repeat(np.asarray(w.d, np.float32), BLOCK, axis=1)
    if w.fmt == "q8_0":
        return np.asarray(w.qs, np.int8).astype(np.float32) * d
    q = _nibbles(np.asarray(w.qs, np.uint8), n, nb).astype(np.float32)
    if w.fmt == "q4_0":
        return d * (q - 8.0)
    return d * q + np.repeat(np.asarray(w.m, np.float32), BLOCK, axis=1)


def dequantize_jax(w: BlockQuant, dtype: Any = jnp.float32) -> jax.Array:
    """The same as `dequantize`, traced: [N, K] in `dtype` (the path without the CPU kernel)."""
    _rows_layout(w, "dequantize_jax")
    n, nb = w.rows, w.cols // BLOCK
    d = w.d.astype(jnp.float32)[:, :, None]  # [N, nb, 1]
    if w.fmt == "q8_0":
        q = w.qs.reshape(n, nb, BLOCK).astype(jnp.float32)
        return (q * d).reshape(n, -1).astype(dtype)
    b = w.qs.reshape(n, nb, BLOCK // 2)
    q = jnp.concatenate([b & 0x0F, b >> 4], axis=-1).astype(jnp.float32)
    out = d * (q - 8.0) if w.fmt == "q4_0" else d * q + w.m.astype(jnp.float32)[:, :, None]
    return out.reshape(n, -1).astype(dtype)


def take_rows(w: BlockQuant, rows: np.ndarray, out_shape: tuple[int, ...]) -> BlockQuant:
    """Rows `rows` of w (output channels, e.g. llama.cpp's Q/K order undone) as a matrix with
    `out_shape`; blocks run along the inputs, so reordering rows keeps every block intact."""
    if int(np.prod(out_shape)) != len(rows):
        raise ValueError(f"take_rows: {len(rows)} rows do not fill out_shape {out_shape}")
    m = None if w.m is None else np.asarray(w.m)[rows]
    return BlockQuant(
        qs=np.asarray(w.qs)[rows],
        d=np.asarray(w.d)[rows],
        m=m,
        fmt=w.fmt,
        in_shape=w.in_shape,
        out_shape=tuple(out_shape),
    )


def concat_rows(parts: Sequence[BlockQuant], out_shape: tuple[int, ...]) -> BlockQuant:
    """Stack the output rows of same-format, same-input matrices (fused QKV, gate/up)."""
    first = parts[0]
    if any(p.fmt != first.fmt or p.in_shape != first.in_shape for p in parts):
        raise ValueError("concat_rows: every part needs the same format and inputs")
    m = None if first.m is None else np.concatenate([np.asarray(p.m) for p in parts])
    return BlockQuant(
        qs=np.concatenate([np.asarray(p.qs) for p in parts]),
        d=np.concatenate([np.asarray(p.d) for p in parts]),
        m=m,
        fmt=first.fmt,
        in_shape=first.in_shape,
        out_shape=tuple(out_shape),
    )
