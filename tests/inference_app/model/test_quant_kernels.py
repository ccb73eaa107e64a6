"""The block-quantized weight kernels (`kernels/quant_kernels.cc`) against NumPy on odd shapes,
at the CPU's own feature level and at the portable one (plain C++ loops, built in a child
process), and their agreement with the unrounded product."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inference_app.kernels import build, quant_ops
from inference_app.model import quant

pytestmark = pytest.mark.skipif(not build.available(), reason="no C++ compiler: kernels not built")

RNG = np.random.default_rng(5)
matmul = jax.jit(quant_ops.matmul)


def rounded_product(x: np.ndarray, w: quant.BlockQuant) -> np.ndarray:
    """What the kernel computes: x rounded to int8 per block of 32 (scale amax / 127, ties to
    even, in float32 as the kernel does), then the exact product with the dequantized weight."""
    m, k = x.shape
    blocks = x.reshape(m, k // quant.BLOCK, quant.BLOCK)
    d = np.abs(blocks).max(axis=-1, keepdims=True) / np.float32(127)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
    q = np.rint(blocks * inv)
    assert np.abs(q).max() <= 127
    xr = (q.astype(np.float64) * d.astype(np.float64)).reshape(m, k)
    return xr @ quant.dequantize(w).astype(np.float64).T


def check(fmt: quant.Format, m: int, k: int, n: int) -> None:
    x = RNG.standard_normal((m, k)).astype(np.float32)
    x[0, :32] = 0.0  # a zero block: scale 0, no division by zero
    if m > 1:
        x[1, 5] = 40.0  # an outlier sets its block's scale
    w = quant.quantize(RNG.standard_normal((k, n)).astype(np.float32), fmt)
    got = np.asarray(matmul(jnp.asarray(x), jax.tree.map(jnp.asarray, w)))
    want = rounded_product(x, w)
    assert got.shape == (m, n) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5 * np.abs(want).max())
    # and from the unrounded product by no more than the rounding allows: half a step per input
    wd = quant.dequantize(w).astype(np.float64)
    exact = x.astype(np.float64) @ wd.T
    half_step = np.repeat(np.abs(x).reshape(m, -1, quant.BLOCK).max(-1) / 127 / 2, quant.BLOCK, axis=1)
    assert np.all(np.abs(got - exact) <= half_step @ np.abs(wd).T * 1.001 + 1e-4)


SHAPES = [
    (1, 32, 1),
    (2, 96, 3),
    (3, 64, 17),
    (4, 576, 577),
    (5, 160, 34),
    (7, 64, 2),
    (33, 96, 50),
    (64, 576, 96),
]


@pytest.mark.parametrize("fmt", quant.FORMATS)
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_quant_matmul_matches_numpy(fmt: quant.Format, m: int, k: int, n: int) -> None:
    check(fmt, m, k, n)


def to_bf16(a: np.ndarray) -> np.ndarray:
    """float32 -> the nearest bfloat16 (ties to even), as float64."""
    return np.asarray(jnp.asarray(a, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


def check_float_rows(fmt: quant.Format, m: int, k: int, n: int, split: int) -> None:
    """Rows from `split` on are the products with the dequantized weights in float32 (bfloat16
    operands where the CPU has AVX512_BF16), not rounded to int8; rows before it are what the
    all-int8 call gives; every float row has the bits it has alone."""
    x = RNG.standard_normal((m, k)).astype(np.float32)
    w = quant.quantize(RNG.standard_normal((k, n)).astype(np.float32), fmt)
    wj = jax.tree.map(jnp.asarray, w)
    got = np.asarray(matmul(jnp.asarray(x), wj, split))
    np.testing.assert_array_equal(got[:split], np.asarray(matmul(jnp.asarray(x), wj))[:split])
    if build.prompt_rows_bf16():
        exact = to_bf16(x) @ to_bf16(quant.dequantize(w)).T
    else:
        exact = x.astype(np.float64) @ quant.dequantize(w).astype(np.float64).T
    # float32 summation over k: relative error ~ sqrt(k) * eps of the sum of |products|
    bound = (
        1e-6 * np.sqrt(k) * (np.abs(x).astype(np.float64) @ np.abs(quant.dequantize(w)).T.astype(np.float64))
    )
    assert np.all(np.abs(got[split:] - exact[split:]) <= bound[split:] + 1e-6)
    for r in range(split, m, max(1, (m - split) // 4)):
        alone = np.asarray(matmul(jnp.asarray(x[r : r + 1]), wj, 0))
        np.testing.assert_array_equal(alone[0], got[r])


FLOAT_SHAPES = [
    (1, 32, 1, 0),
    (7, 64, 17, 3),
    (13, 96, 33, 0),
    (30, 576, 65, 5),
    (40, 1536, 40, 40),
    (70, 64, 96, 2),
]


@pytest.mark.parametrize("fmt", quant.FORMATS)
@pytest.mark.parametrize("m,k,n,split", FLOAT_SHAPES)
def test_float_rows_are_the_dequantized_product(
    fmt: quant.Format, m: int, k: int, n: int, split: int
) -> None:
    check_float_rows(fmt, m, k, n, split)


needs_packed = pytest.mark.skipif(not build.packed_layout(), reason="no 16-row packed kernel at this level")


@pytest.mark.parametrize("fmt", quant.FORMATS)
def test_pack16_round_trips_and_dequantizes_alike(fmt: quant.Format) -> None:
    w = quant.quantize(RNG.standard_normal((96, 48)).astype(np.float32), fmt)
    packed = quant.pack16(w)
    assert packed.layout == "x16" and packed.qs.shape == w.qs.shape and not quant.packable(packed)
    back = quant.unpack16(packed)
    for a, b in ((back.qs, w.qs), (back.d, w.d), (back.m, w.m)):
        assert (a is None and b is None) or np.array_equal(a, b)
    np.testing.assert_array_equal(quant.dequantize(packed), quant.dequantize(w))
    with pytest.raises(ValueError, match="x16 layout"):
        quant.dequantize_jax(packed)
    with pytest.raises(ValueError, match="groups of 16"):
        quant.pack16(quant.quantize(RNG.standard_normal((64, 8)).astype(np.float32), fmt))


@needs_packed
@pytest.mark.parametrize("fmt", quant.FORMATS)
@pytest.mark.parametrize(
    "m,k,n,split", [(1, 32, 16, 1), (5, 96, 48, 5), (13, 576, 64, 9), (70, 1536, 32, 33)]
)
def test_packed_weights_give_the_same_products(fmt: quant.Format, m: int, k: int, n: int, split: int) -> None:
    """The 16-row layout (decode rows: 16 outputs per instruction): int8 rows within float32
    rounding of the row layout's (another summation order), each with the bits it has alone;
    float rows identical to the row layout's."""
    x = RNG.standard_normal((m, k)).astype(np.float32)
    w = quant.quantize(RNG.standard_normal((k, n)).astype(np.float32), fmt)
    rows = np.asarray(matmul(jnp.asarray(x), jax.tree.map(jnp.asarray, w), split))
    pw = jax.tree.map(jnp.asarray, quant.pack16(w))
    got = np.asarray(matmul(jnp.asarray(x), pw, split))
    np.testing.assert_array_equal(got[split:], rows[split:])
    np.testing.assert_allclose(got[:split], rows[:split], rtol=1e-5, atol=1e-5 * np.abs(rows).max())
    np.testing.assert_allclose(
        got[:split], rounded_product(x, w)[:split], rtol=1e-4, atol=2e-5 * np.abs(rows).max()
    )
    for r in range(0, split, 4):
        alone = np.asarray(matmul(jnp.asarray(x[r : r + 1]), pw))
        np.testing.assert_array_equal(alone[0], got[r])


def test_q8_0_full_int8_range_does_not_saturate() -> None:
    """Weights at +-127 (and a stored -128) times activations at +-127: the u8 x s8 multiply-adds
    would saturate int16 if the signs were handled wrongly."""
    k, n = 64, 4
    w = quant.quantize(np.ones((k, n), np.float32), "q8_0")
    qs = np.full((n, k), 127, np.int8)
    qs[1] = -127
    qs[2, ::2] = -128
    w = quant.BlockQuant(
        qs=qs, d=np.ones((n, k // 32), np.float16), m=None, fmt="q8_0", in_shape=(k,), out_shape=(n,)
    )
    x = np.where(np.arange(k) % 2 == 0, 1.0, -1.0).astype(np.float32)[None].repeat(2, 0)
    x[1] = -1.0
    got = np.asarray(matmul(jnp.asarray(x), jax.tree.map(jnp.asarray, w)))
    np.testing.assert_allclose(got, x.astype(np.float64) @ quant.dequantize(w).T, rtol=1e-6)


def test_reference_matmul_is_the_unrounded_product() -> None:
    x = RNG.standard_normal((3, 64)).astype(np.float32)
    w = quant.quantize(RNG.standard_normal((64, 5)).astype(np.float32), "q4_1")
    got = np.asarray(jax.jit(quant_ops.reference_matmul)(jnp.asarray(x), jax.tree.map(jnp.asarray, w)))
    np.testing.assert_allclose(got, x @ quant.dequantize(w).T, rtol=1e-5, atol=1e-5)


def test_mismatched_shapes_are_rejected() -> None:
    w = quant.quantize(RNG.standard_normal((64, 5)).astype(np.float32), "q4_0")
    with pytest.raises(ValueError, match="does not match 5x64"):
        quant_ops.matmul(jnp.ones((2, 32)), w)


PORTABLE_CHECK = """
import json, sys
from inference_app.kernels import build
assert build.available(), "portable kernels did not build"
sys.path.insert(0, sys.argv[1])
import test_quant_kernels as t
for fmt in ("q4_0", "q4_1", "q8_0"):
    for shape in t.SHAPES:
        t.check(fmt, *shape)
    for shape in t.FLOAT_SHAPES:
        t.check_float_rows(fmt, *shape)
print(json.dumps({"level": build.levels()[0].name, "library": str(build.build())}))
"""


@pytest.mark.slow
def test_portable_level_matches_numpy(tmp_path: Path) -> None:
    """The plain C++ loops (no AVX2: what a CPU without it, or another architecture, runs)."""
    portable = build.all_levels()[-1].name
    env = {**os.environ, build.ENV_LEVEL: portable, build.ENV_CACHE_DIR: str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", PORTABLE_CHECK, str(Path(__file__).parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["level"] == portable and portable in Path(result["library"]).name
