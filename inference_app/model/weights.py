"""Checkpoint tensors (Hugging Face names and layouts) -> our parameter pytree.

Both loaders funnel through `params_from_hf`: the GGUF loader first renames tensors and undoes
llama.cpp's Q/K row permutation, so there is exactly one place that knows our layout. Each
matrix is built from its checkpoint rows by one `MatrixSpec` (which rows, in which order, into
which shape), whether it ends up float, int8 or block-quantized, so the float and quantized
layouts cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from inference_app.model import quant
from inference_app.model.config import ModelConfig
from inference_app.model.quant import BlockQuant
from inference_app.model.transformer import Params, Weight, quantize_int8

# How a checkpoint's matrices are held: `float` in the compute dtype; `int8` per output channel
# (`QInt8`); one of llama.cpp's block formats (`BlockQuant`, quantized at load unless a GGUF
# file stores the matrix in that format already); `gguf`: each matrix as a GGUF file stores it
# (block formats as stored, float tensors as float, llama.cpp's other quantized types as Q8_0).
MatrixFormat = Literal["float", "int8", "q4_0", "q4_1", "q8_0", "gguf"]
MATRIX_FORMATS: tuple[str, ...] = typing.get_args(MatrixFormat)

# How many leading dims each matrix contracts over (for per-output-channel int8 scales).
IN_DIMS = {"wqkv": 1, "wo": 3, "w_gate_up": 1, "w_down": 1, "lm_head": 1}

TensorGetter = Callable[[str], np.ndarray]
# A matrix by HF name in a block format as a GGUF file stores it, or None for a float tensor.
BlockGetter = Callable[[str], BlockQuant | None]


@dataclass(frozen=True)
class MatrixSpec:
    """One of our matrices [*in_shape, *out_shape] from HF projection weights [out, in]: the
    rows of `parts` stacked, reordered by `order` (None: as stacked), then split into shapes."""

    parts: tuple[str, ...]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    order: np.ndarray | None = None


def qkv_order(cfg: ModelConfig) -> np.ndarray:
    """Row order turning stacked [q; k; v] projection rows into [KVH, G + 2, Dh]: per KV head, its
    G query heads, then its k, then its v."""
    k, g, hd = cfg.num_kv_heads, cfg.group_size, cfg.head_dim
    nq, nkv = k * g * hd, k * hd
    q = np.arange(nq).reshape(k, g, hd)
    kk = nq + np.arange(nkv).reshape(k, 1, hd)
    v = nq + nkv + np.arange(nkv).reshape(k, 1, hd)
    return np.concatenate([q, kk, v], axis=1).reshape(-1)


def layer_specs(cfg: ModelConfig, i: int) -> dict[str, MatrixSpec]:
    """The matrices of layer i (see `model/transformer.py` for the layouts)."""
    k, g, hd, d, f = cfg.num_kv_heads, cfg.group_size, cfg.head_dim, cfg.hidden_size, cfg.ffn_size
    p = f"model.layers.{i}."
    attn, mlp = p + "self_attn.", p + "mlp."
    return {
        "wqkv": MatrixSpec(
            (attn + "q_proj.weight", attn + "k_proj.weight", attn + "v_proj.weight"),
            (d,),
            (k, g + 2, hd),
            qkv_order(cfg),
        ),
        "wo": MatrixSpec((attn + "o_proj.weight",), (k, g, hd), (d,)),
        "w_gate_up": MatrixSpec((mlp + "gate_proj.weight", mlp + "up_proj.weight"), (d,), (2, f)),
        "w_down": MatrixSpec((mlp + "down_proj.weight",), (f,), (d,)),
    }


def float_matrix(spec: MatrixSpec, get: TensorGetter) -> np.ndarray:
    """The matrix [*in, *out] as float32 from the checkpoint's (dequantized) tensors."""
    rows = np.concatenate([np.asarray(get(name), np.float32) for name in spec.parts])
    if spec.order is not None:
        rows = rows[spec.order]
    return np.ascontiguousarray(rows.T).reshape(*spec.in_shape, *spec.out_shape)


def stored_matrix(spec: MatrixSpec, blocks: Sequence[BlockQuant]) -> BlockQuant:
    """The matrix from its parts' blocks as stored (all in one format)."""
    n = sum(b.rows for b in blocks)
    w = blocks[0] if len(blocks) == 1 else quant.concat_rows(blocks, (n,))
    if spec.order is not None:
        w = quant.take_rows(w, spec.order, (n,))
    return dataclasses.replace(w, in_shape=spec.in_shape, out_shape=spec.out_shape)


@dataclass(frozen=True)
class MatrixBuilder:
    """Builds every matrix of one checkpoint in one `MatrixFormat`."""

    get: TensorGetter
    dtype: Any
    fmt: MatrixFormat
    stored: BlockGetter | None  # GGUF checkpoints only

    def __post_init__(self) -> None:
        if self.fmt not in MATRIX_FORMATS:
            raise ValueError(
                f"unknown matrix format {self.fmt!r}; expected one of {', '.join(MATRIX_FORMATS)}"
            )
        if self.fmt == "gguf" and self.stored is None:
            raise ValueError(
                "matrix format 'gguf' keeps a GGUF file's blocks as stored, and this checkpoint is not "
                "a GGUF file; pick q4_0, q4_1 or q8_0 to quantize it at load"
            )

    def __call__(self, spec: MatrixSpec) -> Weight | np.ndarray:
        if self.fmt == "float":
            return np.asarray(float_matrix(spec, self.get), self.dtype)
        if self.fmt == "int8":
            return quantize_int8(float_matrix(spec, self.get), len(spec.in_shape))
        fmt: str = self.fmt
        if self.stored is not None:
            parts = [self.stored(name) for name in spec.parts]
            blocks = [b for b in parts if b is not None]
            kinds = {b.fmt for b in blocks}
            if len(blocks) == len(parts) and len(kinds) == 1 and fmt in ("gguf", blocks[0].fmt):
                return stored_matrix(spec, blocks)  # as stored
            if fmt == "gguf" and not blocks:  # stored as float
                return np.asarray(float_matrix(spec, self.get), self.dtype)
        if fmt == "gguf":  # parts stored in different formats: the most precise block format
            fmt = "q8_0"
        return quant.quantize(float_matrix(spec, self.get), fmt, len(spec.in_shape))


def params_from_hf(
    cfg: ModelConfig,
    get: TensorGetter,
    dtype: Any = np.float32,
    matrices: MatrixFormat = "float",
    stored: BlockGetter | None = None,
) -> Params:
    """Build host (numpy) params from HF-named tensors, matrices (embeddings included) in
    `matrices` format; `stored` reads a GGUF file's blocks as stored."""
    build = MatrixBuilder(get, dtype, matrices, stored)
    layers = []
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        layer: dict[str, Any] = {name: build(spec) for name, spec in layer_specs(cfg, i).items()}
        layer["attn_norm"] = np.asarray(get(p + "input_layernorm.weight"), dtype)
        layer["mlp_norm"] = np.asarray(get(p + "post_attention_layernorm.weight"), dtype)
        layers.append(layer)
    v, d = cfg.vocab_size, cfg.hidden_size
    # Rows of the table are output channels of the tied LM head: a quantized table is [V, D]
    # output-major, which makes it both the lookup table and the LM head.
    embed = build(MatrixSpec(("model.embed_tokens.weight",), (d,), (v,)))
    head = None
    if isinstance(embed, np.ndarray):  # float: built as [D, V], the tied LM head's layout
        embed, head = np.ascontiguousarray(embed.T), embed
    params: Params = {
        "embed": embed,
        "final_norm": np.asarray(get("model.norm.weight"), dtype),
        "layers": layers,
    }
    if not cfg.tie_embeddings:
        params["lm_head"] = build(MatrixSpec(("lm_head.weight",), (d,), (v,)))
    elif head is not None:  # tied float: the transposed copy streams faster, see transformer.py
        params["lm_head"] = head
    return params
