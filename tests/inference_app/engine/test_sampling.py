"""Sampling on synthetic logits: greedy, top-k, top-p, temperature, seeding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inference_app.engine.api import SamplingParams
from inference_app.engine.sampling import BLOCK, greedy, sample, sample_full
from inference_app.engine.steps import SamplingRows, sampler_for

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


def draw_full(logits: np.ndarray, temperature: float, n: int, first_seed: int = 0) -> np.ndarray:
    rows = np.repeat(np.asarray(logits, np.float32)[None], n, axis=0)
    return np.asarray(
        jax.jit(sample_full)(
            rows,
            np.full(n, temperature, np.float32),
            np.arange(first_seed, first_seed + n, dtype=np.uint32),
            np.zeros(n, np.int32),
        )
    )


def test_full_sampling_follows_the_distribution_across_blocks() -> None:
    """The sort-free sampler on a vocabulary of several blocks (and a partial last one): mass
    spread over entries in different blocks, the first and the last entry included."""
    vocab = 3 * BLOCK + 17
    logits = np.full(vocab, -np.inf, np.float32)
    want = {0: 0.4, BLOCK - 1: 0.1, BLOCK + 5: 0.3, vocab - 1: 0.2}
    logits[list(want)] = np.log(list(want.values()))
    got = draw_full(logits, 1.0, 8000)
    assert set(got.tolist()) <= set(want)  # never an entry of probability 0 (masked)
    for token, p in want.items():
        assert abs(np.mean(got == token) - p) < 0.03, (token, np.mean(got == token))


def test_full_sampling_temperature_and_greedy_rows() -> None:
    np.testing.assert_array_equal(draw_full(LOGITS[0], 0.0, 16), np.zeros(16))
    assert (draw_full(LOGITS[0], 0.05, 400) == 0).mean() > 0.99
    counts = np.bincount(draw_full(LOGITS[0], 1.0, 4000), minlength=4) / 4000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.04)


def test_full_sampling_is_seeded_and_row_independent() -> None:
    """A row's token depends on its seed and position only, not on the rows beside it."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((64, 1000)).astype(np.float32)
    f = jax.jit(sample_full)
    args = (np.ones(64, np.float32), np.arange(64, dtype=np.uint32), np.arange(64, dtype=np.int32))
    together = np.asarray(f(logits, *args))
    alone = [int(f(logits[i : i + 1], *(a[i : i + 1] for a in args))[0]) for i in range(0, 64, 9)]
    assert together[::9].tolist() == alone
    assert np.asarray(f(logits, *args)).tolist() == together.tolist() and len(set(together.tolist())) > 10


@pytest.mark.parametrize(
    ("params", "want"),
    [
        ([SamplingParams(), SamplingParams(temperature=0.0, top_k=5)], "greedy"),
        ([SamplingParams(), SamplingParams(temperature=1.0)], "full"),
        ([SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_p=0.9)], "truncated"),
        ([SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=40)], "truncated"),
    ],
)
def test_the_cheapest_sampler_that_serves_every_row(params: list[SamplingParams], want: str) -> None:
    assert sampler_for(SamplingRows.of(params)) == want
