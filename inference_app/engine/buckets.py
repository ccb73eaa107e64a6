"""Compiled sizes: every shape the engine jits comes from a ladder here, and is looked up here.

A jitted step compiles once per distinct shape, so the engine pads each dimension that varies
(prompt length, decode rows, attention length, step rows) up to a size on a short ladder and
compiles the whole ladder during warm-up. `ladder` builds every ladder; `fit` picks the rung.
"""

from __future__ import annotations

from collections.abc import Sequence


def ladder(smallest: int, largest: int, growth: int = 2, halves_from: int | None = None) -> tuple[int, ...]:
    """`smallest` x growth^i below `largest`, then `largest` itself (always the last rung, and
    the only one when `smallest` >= `largest`).

    With `halves_from`, every power rung >= it also gets a rung half-way to the next (x1.5),
    so padding up to the next rung wastes at most a third instead of half.
    """
    if smallest < 1 or growth < 2:
        raise ValueError(f"bad ladder: smallest={smallest}, largest={largest}, growth={growth}")
    out = {largest}
    b = smallest
    while b < largest:
        out.add(b)
        if halves_from is not None and b >= halves_from and b * 3 // 2 < largest:
            out.add(b * 3 // 2)
        b *= growth
    return tuple(sorted(out))


def fit(rungs: Sequence[int], need: int) -> int | None:
    """The smallest rung >= `need`, or None when even the largest is too small."""
    return next((b for b in rungs if need <= b), None)


def fit_or_largest(rungs: Sequence[int], need: int) -> int:
    """The smallest rung >= `need`, else the largest (the caller then works in several passes)."""
    found = fit(rungs, need)
    return rungs[-1] if found is None else found


def step_rows(max_slots: int, budget: int) -> tuple[int, ...]:
    """Row counts of mixed (decode + prompt chunk) steps: 1, 2, 4, 8, then powers of two and
    1.5x powers of two (12, 16, 24, 32, 48 ...) up to the token budget, plus `max_slots` itself
    (every slot busy: no padding rows). A decode step of 9-12 live slots runs 12 rows, not 16."""
    return tuple(sorted({*ladder(1, budget, halves_from=8), max_slots}))
