"""A row's numbers must not depend on how many rows share its step (see `transformer.row_sum`)."""

from __future__ import annotations

import jax
import numpy as np

from inference_app.model.transformer import rms_norm, row_sum


def test_rms_norm_of_a_row_is_the_same_in_any_batch() -> None:
    """XLA:CPU's own row reduction changes its order at 8 rows and more (measured: 4.8e-7 apart);
    every row count here must give the row the same bits."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((512, 576)) * 3).astype(np.float32)
    w = rng.standard_normal(576).astype(np.float32)
    norm = jax.jit(lambda a: rms_norm(a, w, 1e-5, fixed_order=True))
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
