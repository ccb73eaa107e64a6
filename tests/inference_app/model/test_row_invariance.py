"""A row's numbers must not depend on how many rows share its step (see `transformer.row_sum`)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from inference_app.kernels import build
from inference_app.kernels.ops import NATIVE_CPU, PURE_JAX, KernelChoice
from inference_app.model.transformer import rms_norm, row_sum

needs_kernels = pytest.mark.skipif(not build.available(), reason="no C++ compiler: kernels not built")
KERNELS = [PURE_JAX, pytest.param(NATIVE_CPU, marks=needs_kernels, id="native")]


@pytest.mark.parametrize("kernels", KERNELS)
def test_rms_norm_of_a_row_is_the_same_in_any_batch(kernels: KernelChoice) -> None:
    """XLA:CPU's own row reduction changes its order at 8 rows and more (measured: 4.8e-7 apart);
    every row count here must give the row the same bits, in JAX (`row_sum`) and in the kernel."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((512, 576)) * 3).astype(np.float32)
    w = rng.standard_normal(576).astype(np.float32)
    norm = jax.jit(lambda a: rms_norm(a, w, 1e-5, fixed_order=True, kernels=kernels))
    alone = np.asarray(norm(x[:1]))[0]
    for rows in (2, 7, 8, 9, 16, 39, 64, 128, 512):
        np.testing.assert_array_equal(np.asarray(norm(x[:rows]))[0], alone)
    for batch, seq in ((1, 64), (2, 32), (4, 128)):  # prompt steps: [B, S, D]
        np.testing.assert_array_equal(np.asarray(norm(x[: batch * seq].reshape(batch, seq, -1)))[0, 0], alone)


def test_row_sum_adds_every_element() -> None:
    rng = np.random.default_rng(1)
    for width in (1, 7, 8, 9, 12, 576, 1000):
        x = rng.standard_normal((3, width)).astype(np.float32)
        np.testing.assert_allclose(np.asarray(row_sum(x)), x.astype(np.float64).sum(-1), rtol=1e-5, atol=1e-5)


@needs_kernels
def test_native_rms_norm_matches_float64() -> None:
    rng = np.random.default_rng(2)
    for shape in ((1, 576), (3, 7, 576), (5, 1000), (2, 5)):  # widths with and without a tail
        x = (rng.standard_normal(shape) * 3).astype(np.float32)
        w = rng.standard_normal(shape[-1]).astype(np.float32)
        norm = jax.jit(lambda a, w=w: rms_norm(a, w, 1e-5, fixed_order=True, kernels=NATIVE_CPU))
        got = np.asarray(norm(x))
        x64 = x.astype(np.float64)
        want = x64 / np.sqrt((x64 * x64).mean(-1, keepdims=True) + 1e-5) * w
        assert got.shape == x.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
