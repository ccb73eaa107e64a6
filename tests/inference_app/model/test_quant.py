"""Block-quantized weight formats (`model/quant.py`) against the `gguf` package: dequantization
of our split arrays equals gguf's on random matrices and on the embedded model's own tensors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gguf.quants import dequantize as gguf_dequantize

from inference_app.model import quant

RNG = np.random.default_rng(11)


@pytest.mark.parametrize("fmt", quant.FORMATS)
def test_dequantize_equals_gguf(fmt: quant.Format) -> None:
    w = RNG.standard_normal((96, 7)).astype(np.float32) * 3  # [in, out]
    w[:32, 2] = 0.0  # an all-zero block (scale 0)
    b = quant.quantize(w, fmt)
    assert (b.rows, b.cols, b.in_shape, b.out_shape) == (7, 96, (96,), (7,))
    want = gguf_dequantize(quant.to_gguf_rows(b), quant.GGML_TYPES[fmt])
    np.testing.assert_array_equal(quant.dequantize(b), want)
    np.testing.assert_array_equal(np.asarray(jax.jit(quant.dequantize_jax)(b)), want)
    assert np.abs(quant.dequantize(b) - w.T).max() < {"q8_0": 0.05, "q4_0": 1.2, "q4_1": 1.0}[fmt]


def test_embedded_gguf_tensors_split_and_dequantize_like_gguf() -> None:
    """The embedded SmolLM2 file: Q4_1 layer weights and the Q8_0 embedding table. Also: our
    faster parse (`PlainArrayReader`, behind `open_gguf`) reads the same fields and tensors as
    gguf's own reader."""
    from gguf import GGUFReader

    from inference_app.model.catalog import embedded_model_path
    from inference_app.model.weights_gguf import open_gguf

    reader = GGUFReader(embedded_model_path("smollm2-135m"))
    plain = open_gguf(str(embedded_model_path("smollm2-135m"))).reader
    assert list(plain.fields) == list(reader.fields)
    for key, field in reader.fields.items():
        assert field.types == plain.fields[key].types, key
        assert [bytes(p) for p in field.parts] == [bytes(p) for p in plain.fields[key].parts], key
    assert [(t.name, t.tensor_type, t.data_offset) for t in plain.tensors] == [
        (t.name, t.tensor_type, t.data_offset) for t in reader.tensors
    ]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(plain.tensors, reader.tensors, strict=True))
    seen = set()
    for t in reader.tensors:
        fmt = quant.format_of(t.tensor_type)
        if fmt is None or fmt in seen:
            continue
        seen.add(fmt)
        rows, cols = int(t.shape[1]), int(t.shape[0])
        raw = np.asarray(t.data)[:512]  # the first rows are enough, and keep the test fast
        b = quant.from_gguf_rows(raw, fmt, (cols,), (raw.shape[0],))
        np.testing.assert_array_equal(quant.to_gguf_rows(b), raw)
        np.testing.assert_array_equal(
            quant.dequantize(b), gguf_dequantize(raw, t.tensor_type).reshape(-1, cols)
        )
        assert rows >= raw.shape[0]
    assert seen == {"q4_1", "q8_0"}


def test_take_and_concat_rows_keep_blocks() -> None:
    a = quant.quantize(RNG.standard_normal((64, 6)).astype(np.float32), "q4_1")
    c = quant.quantize(RNG.standard_normal((64, 4)).astype(np.float32), "q4_1")
    order = np.array([5, 0, 3, 1, 4, 2])
    np.testing.assert_array_equal(
        quant.dequantize(quant.take_rows(a, order, (2, 3))), quant.dequantize(a)[order]
    )
    both = quant.concat_rows([a, c], (10,))
    np.testing.assert_array_equal(
        quant.dequantize(both), np.concatenate([quant.dequantize(a), quant.dequantize(c)])
    )


def test_bad_shapes_and_formats_are_named() -> None:
    with pytest.raises(ValueError, match="multiple of 32 inputs"):
        quant.quantize(np.ones((50, 4), np.float32), "q4_1")
    with pytest.raises(ValueError, match="unknown block format 'q5_0'"):
        quant.quantize(np.ones((64, 4), np.float32), "q5_0")
    with pytest.raises(ValueError, match="expected uint8"):
        quant.from_gguf_rows(np.zeros((4, 30), np.uint8), "q4_1", (64,), (4,))
    a = quant.quantize(np.ones((64, 4), np.float32), "q4_1")
    with pytest.raises(ValueError, match="same format"):
        quant.concat_rows([a, quant.quantize(np.ones((64, 4), np.float32), "q8_0")], (8,))


def test_block_quant_is_a_pytree_with_static_format() -> None:
    b = quant.quantize(RNG.standard_normal((64, 3)).astype(np.float32), "q4_0")
    leaves, tree = jax.tree_util.tree_flatten(b)
    assert len(leaves) == 2  # qs, d (no minimum for q4_0)
    placed = jax.tree.map(jnp.asarray, b)
    assert placed.fmt == "q4_0" and placed.in_shape == (64,)
    assert jax.tree_util.tree_unflatten(tree, leaves).out_shape == (3,)


def test_gguf_blocks_are_the_stored_rows_in_hf_order() -> None:
    """`GGUFCheckpoint.blocks` dequantizes to exactly what `tensor` gives (Q/K rows unpermuted),
    for a Q4_1 attention matrix, a permuted Q and K, and the Q8_0 embedding table."""
    from inference_app.model.catalog import embedded_model_path
    from inference_app.model.weights_gguf import open_gguf

    ckpt = open_gguf(str(embedded_model_path("smollm2-135m")))
    for name in (
        "model.layers.3.self_attn.q_proj.weight",
        "model.layers.3.self_attn.k_proj.weight",
        "model.layers.3.mlp.down_proj.weight",
        "model.embed_tokens.weight",
    ):
        b = ckpt.blocks(name)
        assert b is not None
        np.testing.assert_array_equal(quant.dequantize(b), ckpt.tensor(name))
    assert ckpt.blocks("model.norm.weight") is None  # stored as F32
