"""Sampling on synthetic logits: greedy, top-k, top-p, temperature, seeding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from inference_app.engine.sampling import greedy, sample

LOGITS = np.log(np.asarray([[0.5, 0.3, 0.15, 0.05]], np.float32))


def draw(n: int, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    logits = np.repeat(LOGITS, n, axis=0)
    f = jax.jit(sample)
    return np.asarray(
        f(
            logits,
            np.full(n, temperature, np.float32),
            np.full(n, top_k, np.int32),
            np.full(n, top_p, np.float32),
            np.arange(n, dtype=np.uint32),
            np.zeros(n, np.int32),
        )
    )


def test_greedy_is_argmax() -> None:
    assert greedy(jnp.asarray([[0.1, 3.0, 2.0]])).tolist() == [1]
    assert draw(8, 0.0, 0, 1.0).tolist() == [0] * 8


def test_top_k_limits_candidates() -> None:
    assert set(draw(400, 1.0, 2, 1.0).tolist()) == {0, 1}


def test_top_p_keeps_the_nucleus() -> None:
    # cumulative mass before each token: 0, 0.5, 0.8, 0.95 -> top_p=0.7 keeps tokens 0 and 1
    assert set(draw(400, 1.0, 0, 0.7).tolist()) == {0, 1}


def test_temperature_one_follows_the_distribution() -> None:
    counts = np.bincount(draw(4000, 1.0, 0, 1.0), minlength=4) / 4000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.04)


def test_low_temperature_sharpens() -> None:
    assert (draw(400, 0.05, 0, 1.0) == 0).mean() > 0.99


def test_same_seed_and_position_same_token() -> None:
    a, b = draw(64, 1.0, 0, 1.0), draw(64, 1.0, 0, 1.0)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) > 1
