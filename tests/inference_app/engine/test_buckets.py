"""Bucket ladders and the rung a size fits in (every compiled shape comes from these)."""

from __future__ import annotations

import itertools

import pytest

from inference_app.engine.buckets import fit, fit_or_largest, ladder, step_rows


def test_powers_of_two_end_with_the_largest() -> None:
    assert ladder(32, 512) == (32, 64, 128, 256, 512)
    assert ladder(32, 100) == (32, 64, 100)
    assert ladder(128, 64) == (64,)  # smallest beyond largest: the largest alone
    assert ladder(1, 32, growth=4) == (1, 4, 16, 32)


def test_halves_bound_the_padding() -> None:
    assert ladder(1, 64, halves_from=8) == (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
    b = ladder(1, 100, halves_from=8)
    assert b[-1] == 100 and all(x < y <= x * 2 for x, y in itertools.pairwise(b))


def test_step_rows_cover_decode_then_grow_to_the_budget() -> None:
    assert step_rows(32, 256) == (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
    assert step_rows(8, 8) == (1, 2, 4, 8)
    assert 20 in step_rows(20, 64)  # every slot busy: no padding rows


def test_fit_picks_the_smallest_rung_that_holds() -> None:
    rungs = (32, 64, 100)
    assert [fit(rungs, n) for n in (1, 32, 33, 100, 101)] == [32, 32, 64, 100, None]
    assert fit_or_largest(rungs, 101) == 100 and fit_or_largest(rungs, 40) == 64


@pytest.mark.parametrize(("smallest", "growth"), [(0, 2), (1, 1)])
def test_a_ladder_that_would_not_end_is_an_error(smallest: int, growth: int) -> None:
    with pytest.raises(ValueError, match="bad ladder"):
        ladder(smallest, 10, growth=growth)
