"""Checkpoint tensors (Hugging Face names and layouts) -> our parameter pytree.

This is the one place that knows our layout. Every parameter is described by a `ParamPlan`:
each output channel of one of our matrices is exactly one row of one HF tensor (HF stores
`[out_features, in_features]`), so a plan is the ordered list of HF row ranges that make up our
output channels, plus how our array arranges them (input dims first for matrices, rows first for
the embedding table, a plain vector for norms). From a plan any block of our array can be built
from just the HF rows it needs: `block` (float) and `int8_rows` (per-output-channel int8, which
needs whole rows and nothing else), and `block_rows` (llama.cpp's block formats, whole rows
too; from a GGUF file the stored blocks of those rows, not dequantized). `params_from_hf`
assembles whole host arrays (small models, tests, the GGUF path, block formats);
`model/streaming.py` builds per-device shards (float or int8) from the same plans.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import jax
import numpy as np

from inference_app.model import quant
from inference_app.model.config import ModelConfig
from inference_app.model.quant import BlockQuant
from inference_app.model.transformer import Params, QInt8, quantize_int8

# How a checkpoint's matrices are held: `float` in the compute dtype; `int8` per output channel
# (`QInt8`); one of llama.cpp's block formats (`BlockQuant`, quantized at load unless a GGUF
# file stores the matrix in that format already); `gguf`: each matrix as a GGUF file stores it
# (block formats as stored, float tensors as float, llama.cpp's other quantized types as Q8_0).
MatrixFormat = Literal["float", "int8", "q4_0", "q4_1", "q8_0", "gguf"]
MATRIX_FORMATS: tuple[str, ...] = typing.get_args(MatrixFormat)
# The formats every loader streams or restores straight into device shards; the block formats
# are built whole on host (`params_from_hf`), for the one-device CPU kernels they serve.
SHARDED_FORMATS: tuple[MatrixFormat, ...] = ("float", "int8")

# How many leading dims each matrix contracts over (for per-output-channel int8 scales).
IN_DIMS = {"wqkv": 1, "wo": 3, "w_gate_up": 1, "w_down": 1, "lm_head": 1}

TensorGetter = Callable[[str], np.ndarray]
# (HF name, first row, end row) -> those rows in the stored dtype ([rows, cols], or [rows] for vectors)
RowReader = Callable[[str, int, int], np.ndarray]
# A tensor by HF name in a block format as a GGUF file stores it (rows in HF order), or None
# for a float tensor.
BlockGetter = Callable[[str], BlockQuant | None]
Path = tuple[str | int, ...]  # ("embed",), ("layers", 3, "wqkv"), ...

# Int8 quantization works through this many bytes of fp32 rows at a time (bounds temporaries).
QUANT_CHUNK_BYTES = 32 * 2**20


@dataclass(frozen=True)
class Segment:
    """Rows [start, stop) of one checkpoint tensor, consecutive output channels of ours."""

    name: str
    start: int
    stop: int


@dataclass(frozen=True)
class ParamPlan:
    """How one of our arrays is made of HF rows (see the module docstring).

    kind "in_first": ours = M.T reshaped to [*in_shape, *out_shape] (the matrices);
    "rows_first": ours = M reshaped to [*out_shape, *in_shape] (the embedding table);
    "vector": ours = M, a 1-D tensor (norm scales). M is the [out, in] matrix of HF rows.
    """

    segments: tuple[Segment, ...]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kind: Literal["in_first", "rows_first", "vector"]
    quantizable: bool  # a matrix: becomes a QInt8 or BlockQuant when those are asked for

    @property
    def shape(self) -> tuple[int, ...]:
        if self.kind == "in_first":
            return (*self.in_shape, *self.out_shape)
        return (*self.out_shape, *self.in_shape)

    @property
    def n_out(self) -> int:
        return math.prod(self.out_shape)

    def source_runs(self, start: int, stop: int) -> Iterator[tuple[str, int, int]]:
        """HF (name, row start, row stop) reads covering our output channels [start, stop)."""
        base = 0
        for seg in self.segments:
            n = seg.stop - seg.start
            lo, hi = max(start, base), min(stop, base + n)
            if lo < hi:
                yield seg.name, seg.start + lo - base, seg.start + hi - base
            base += n

    def rows(self, read: RowReader, start: int, stop: int) -> np.ndarray:
        """Our output channels [start, stop) as the [n, in] matrix of their HF rows."""
        parts = [read(name, a, b) for name, a, b in self.source_runs(start, stop)]
        if self.kind == "vector":
            return parts[0] if len(parts) == 1 else np.concatenate(parts)
        parts = [p.reshape(len(p), -1) for p in parts]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _out_runs(plan: ParamPlan, out_index: tuple[slice, ...]) -> tuple[list[tuple[int, int]], list[int]]:
    """Flat output-channel runs [a, b) that make up a box of out dims (merged when adjacent),
    and the box's sizes. Every dim but the last contributes one run per index combination."""
    ranges = [range(*s.indices(n)) for s, n in zip(out_index, plan.out_shape, strict=True)]
    last = ranges[-1]
    runs: list[tuple[int, int]] = []
    for lead in itertools.product(*ranges[:-1]):
        a = int(np.ravel_multi_index((*lead, last.start), plan.out_shape)) if len(last) else 0
        b = a + len(last)
        if runs and runs[-1][1] == a:
            runs[-1] = (runs[-1][0], b)
        elif b > a:
            runs.append((a, b))
    return runs, [len(r) for r in ranges]


def block(plan: ParamPlan, read: RowReader, index: tuple[slice, ...], dtype: Any) -> np.ndarray:
    """Our float array at `index` (one contiguous slice per dim), reading only the HF rows it
    covers (all of their columns: the input dims are cut after the read)."""
    if plan.kind == "vector":
        (s,) = index
        a, b, _ = s.indices(plan.n_out)
        return np.asarray(plan.rows(read, a, b), dtype)
    n_in, n_out = len(plan.in_shape), len(plan.out_shape)
    if plan.kind == "in_first":
        in_index, out_index = index[:n_in], index[n_in:]
    else:
        out_index, in_index = index[:n_out], index[n_out:]
    runs, sizes = _out_runs(plan, out_index)
    parts = [plan.rows(read, a, b) for a, b in runs]
    m = parts[0] if len(parts) == 1 else np.concatenate(parts)
    m = m.reshape(len(m), *plan.in_shape)[(slice(None), *in_index)]
    in_sel = m.shape[1:]
    if plan.kind == "rows_first":  # dtype None: keep the stored dtype
        return np.ascontiguousarray(m, dtype).reshape(*sizes, *in_sel)
    return _transpose(m.reshape(len(m), -1), dtype).reshape(*in_sel, *sizes)


# Rows per tile of `_transpose`: a tile's source rows stay in cache while its columns are written.
TRANSPOSE_TILE = 128


def _transpose(a: np.ndarray, dtype: Any) -> np.ndarray:
    """a.T as a new C-contiguous `dtype` array, copied in row tiles (a plain strided copy of a
    large matrix runs at a fraction of memory speed)."""
    out = np.empty((a.shape[1], a.shape[0]), dtype)
    for i in range(0, a.shape[0], TRANSPOSE_TILE):
        out[:, i : i + TRANSPOSE_TILE] = a[i : i + TRANSPOSE_TILE].T
    return out


def int8_rows(plan: ParamPlan, read: RowReader, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """(q [n, in] int8, scale [n] f32) of our output channels [start, stop): a QInt8 row block."""
    n_in = math.prod(plan.in_shape)
    step = max(1, QUANT_CHUNK_BYTES // (4 * n_in))
    q = np.empty((stop - start, n_in), np.int8)
    scale = np.empty(stop - start, np.float32)
    for a in range(start, stop, step):
        b = min(stop, a + step)
        qi = quantize_int8(plan.rows(read, a, b).T, 1)  # [in, n] -> per-column (= per-row) scales
        q[a - start : b - start], scale[a - start : b - start] = qi.q, qi.scale
    return q, scale


def check_format(matrices: str) -> MatrixFormat:
    """`matrices` as a MatrixFormat, or a ValueError naming the formats."""
    if matrices not in MATRIX_FORMATS:
        raise ValueError(f"unknown matrix format {matrices!r}; expected one of {', '.join(MATRIX_FORMATS)}")
    return typing.cast(MatrixFormat, matrices)


def stored_rows(plan: ParamPlan, blocks: list[BlockQuant]) -> BlockQuant:
    """The plan's rows from its segments' tensors as stored (`blocks[i]` holds segment i's
    tensor, all in one format): reordering whole rows keeps every block intact."""
    parts = [
        quant.take_rows(b, np.arange(s.start, s.stop), (s.stop - s.start,))
        for s, b in zip(plan.segments, blocks, strict=True)
    ]
    w = parts[0] if len(parts) == 1 else quant.concat_rows(parts, (plan.n_out,))
    return dataclasses.replace(w, in_shape=plan.in_shape, out_shape=plan.out_shape)


def block_rows(
    plan: ParamPlan, read: RowReader, fmt: MatrixFormat, stored: BlockGetter | None
) -> BlockQuant | None:
    """The whole matrix in a block format (`fmt` one of q4_0/q4_1/q8_0/gguf): as `stored` holds
    it when every segment is stored in that format (any one format for `gguf`), else quantized
    from float rows; None for `gguf` and a matrix stored as float (it stays float)."""
    target: str = fmt
    if stored is not None:
        by_name = {name: stored(name) for name in dict.fromkeys(s.name for s in plan.segments)}
        got = [by_name[s.name] for s in plan.segments]  # q, k, v once each, not once per KV head
        blocks = [b for b in got if b is not None]
        kinds = {b.fmt for b in blocks}
        if len(blocks) == len(got) and len(kinds) == 1 and target in ("gguf", blocks[0].fmt):
            return stored_rows(plan, blocks)
        if target == "gguf" and not blocks:  # stored as float
            return None
    if target == "gguf":  # parts stored in different formats: the most precise block format
        target = "q8_0"
    rows = np.asarray(plan.rows(read, 0, plan.n_out), np.float32).reshape(plan.n_out, -1)
    w = quant.quantize(rows.T, target, 1)
    return dataclasses.replace(w, in_shape=plan.in_shape, out_shape=plan.out_shape)


def _plans(cfg: ModelConfig, matrices: MatrixFormat) -> dict[Path, ParamPlan]:
    """Every parameter of `cfg` in our layout (see transformer.py), as HF row plans."""
    k, g, hd, d, f, v = (
        cfg.num_kv_heads,
        cfg.group_size,
        cfg.head_dim,
        cfg.hidden_size,
        cfg.ffn_size,
        cfg.vocab_size,
    )

    def vec(name: str, n: int) -> ParamPlan:
        return ParamPlan((Segment(name, 0, n),), (), (n,), "vector", False)

    plans: dict[Path, ParamPlan] = {}
    emb = "model.embed_tokens.weight"
    plans[("embed",)] = ParamPlan((Segment(emb, 0, v),), (d,), (v,), "rows_first", True)
    plans[("final_norm",)] = vec("model.norm.weight", d)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        q, kk, vv = (p + f"self_attn.{x}_proj.weight" for x in "qkv")
        # Per KV head: its G query heads, then its k head, then its v head.
        qkv = tuple(
            seg
            for h in range(k)
            for seg in (
                Segment(q, h * g * hd, (h + 1) * g * hd),
                Segment(kk, h * hd, (h + 1) * hd),
                Segment(vv, h * hd, (h + 1) * hd),
            )
        )
        gate, up = p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"
        plans[("layers", i, "attn_norm")] = vec(p + "input_layernorm.weight", d)
        plans[("layers", i, "wqkv")] = ParamPlan(qkv, (d,), (k, g + 2, hd), "in_first", True)
        plans[("layers", i, "wo")] = ParamPlan(
            (Segment(p + "self_attn.o_proj.weight", 0, d),), (k, g, hd), (d,), "in_first", True
        )
        plans[("layers", i, "mlp_norm")] = vec(p + "post_attention_layernorm.weight", d)
        plans[("layers", i, "w_gate_up")] = ParamPlan(
            (Segment(gate, 0, f), Segment(up, 0, f)), (d,), (2, f), "in_first", True
        )
        plans[("layers", i, "w_down")] = ParamPlan(
            (Segment(p + "mlp.down_proj.weight", 0, d),), (f,), (d,), "in_first", True
        )
    if not cfg.tie_embeddings:
        plans[("lm_head",)] = ParamPlan((Segment("lm_head.weight", 0, v),), (d,), (v,), "in_first", True)
    elif matrices == "float":  # tied float models keep a transposed copy (see transformer.py);
        # quantized tables ([V, D] output-major) are the LM head themselves
        plans[("lm_head",)] = ParamPlan((Segment(emb, 0, v),), (d,), (v,), "in_first", True)
    return plans


def param_plans(cfg: ModelConfig, matrices: MatrixFormat = "float") -> dict[Path, ParamPlan]:
    return _plans(cfg, check_format(matrices))


def build_tree(cfg: ModelConfig, leaves: dict[Path, Any]) -> Params:
    """Nest {path: leaf} into our params dict (layers as a list)."""
    params: Params = {"layers": [{} for _ in range(cfg.num_layers)]}
    for path, leaf in leaves.items():
        if path[0] == "layers":
            params["layers"][int(path[1])][str(path[2])] = leaf
        else:
            params[str(path[0])] = leaf
    return params


def check_sharded(matrices: MatrixFormat) -> None:
    """A ValueError unless `matrices` is a format that streams or restores into shards."""
    if matrices not in SHARDED_FORMATS:
        raise ValueError(
            f"matrix format {matrices!r} is built whole on host (params_from_hf); streamed and "
            f"sharded weights take {' or '.join(SHARDED_FORMATS)}"
        )


def abstract_leaf(plan: ParamPlan, dtype: Any, matrices: MatrixFormat) -> Any:
    """A ShapeDtypeStruct (or QInt8 of them) for one planned parameter (float or int8 only)."""
    check_sharded(matrices)
    if matrices == "int8" and plan.quantizable:
        in_shape = plan.in_shape
        out_shape = plan.out_shape
        return QInt8(
            q=jax.ShapeDtypeStruct((plan.n_out, math.prod(in_shape)), np.int8),
            scale=jax.ShapeDtypeStruct((plan.n_out,), np.float32),
            in_shape=in_shape,
            out_shape=out_shape,
        )
    return jax.ShapeDtypeStruct(plan.shape, np.dtype(dtype))


def abstract_params(cfg: ModelConfig, dtype: Any, matrices: MatrixFormat) -> Params:
    """Shapes and dtypes of every parameter, without reading a byte (for shardings)."""
    plans = param_plans(cfg, matrices)
    return build_tree(cfg, {p: abstract_leaf(pl, dtype, matrices) for p, pl in plans.items()})


def host_leaf(
    plan: ParamPlan, read: RowReader, dtype: Any, matrices: MatrixFormat, stored: BlockGetter | None = None
) -> Any:
    """The whole parameter on host; `stored` reads a GGUF file's blocks as stored."""
    if matrices == "int8" and plan.quantizable:
        q, scale = int8_rows(plan, read, 0, plan.n_out)
        return QInt8(q=q, scale=scale, in_shape=plan.in_shape, out_shape=plan.out_shape)
    if matrices not in SHARDED_FORMATS and plan.quantizable:
        w = block_rows(plan, read, matrices, stored)
        if w is not None:
            return w
    return block(plan, read, tuple(slice(None) for _ in plan.shape), dtype)


def rows_of(get: TensorGetter, keep: int = 4) -> RowReader:
    """A RowReader over a whole-tensor getter. The last `keep` tensors stay cached: a fused
    parameter interleaves its sources (q, k, v per KV head; gate, up), and a getter may be
    expensive (GGUF dequantizes the whole tensor)."""
    cache: dict[str, np.ndarray] = {}

    def read(name: str, start: int, stop: int) -> np.ndarray:
        if name not in cache:
            if len(cache) >= keep:
                cache.pop(next(iter(cache)))
            cache[name] = get(name)
        return cache[name][start:stop]

    return read


def params_from_hf(
    cfg: ModelConfig,
    get: TensorGetter,
    dtype: Any = np.float32,
    matrices: MatrixFormat = "float",
    stored: BlockGetter | None = None,
) -> Params:
    """Build host (numpy) params from HF-named tensors, matrices (embeddings included) in
    `matrices` format; `stored` reads a GGUF file's blocks as stored (needed for `gguf`)."""
    fmt = check_format(matrices)
    if fmt == "gguf" and stored is None:
        raise ValueError(
            "matrix format 'gguf' keeps a GGUF file's blocks as stored, and this checkpoint is not "
            "a GGUF file; pick q4_0, q4_1 or q8_0 to quantize it at load"
        )
    read = rows_of(get)
    params = build_tree(
        cfg, {p: host_leaf(pl, read, dtype, fmt, stored) for p, pl in param_plans(cfg, fmt).items()}
    )
    if cfg.tie_embeddings and "lm_head" not in params and isinstance(params["embed"], np.ndarray):
        # `gguf` with the table stored as float: the float model's transposed copy
        params["lm_head"] = np.ascontiguousarray(params["embed"].T)
    return params
