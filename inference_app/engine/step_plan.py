"""What one mixed (decode + chunked prefill) step computes: pure host-side bookkeeping.

Each step runs a bucket of token rows. The first rows are the decoding slots (one token each,
read on device from the previous step's output); the rest are chunks of waiting prompts, first
come first served, filling the bucket up to the step's token budget. A prompt longer than what
is left spills into the next steps. The step samples a token for every decoding slot and for each
prompt whose last token ran in it (its first generated token), so a new request starts decoding
on the step after its prefill ends, with no separate prefill pass pausing the others.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from inference_app.engine.buckets import fit_or_largest


@dataclass
class PendingPrompt:
    """A prompt being prefilled in chunks: `done` of its `ids` have run so far."""

    ids: np.ndarray  # int32 [L]
    done: int = 0

    @property
    def left(self) -> int:
        return len(self.ids) - self.done


@dataclass(frozen=True)
class StepPlan:
    """Arrays for one step (padding rows point at slot `num_slots` / position `max_target_length`)."""

    tokens: np.ndarray  # int32 [N]: prompt tokens (decode rows take theirs on device)
    from_state: np.ndarray  # bool [N]: decode rows
    slots: np.ndarray  # int32 [N]
    positions: np.ndarray  # int32 [N]
    logit_rows: np.ndarray  # int32 [R]: rows whose next token is sampled
    logit_slots: np.ndarray  # int32 [R]: the slot each sampled token belongs to
    emitted: tuple[int, ...]  # slots that get a token from this step, in row order
    taken: dict[int, int]  # slot -> prompt tokens run this step
    completed: tuple[int, ...]  # slots whose prompt finished prefilling in this step


def plan_step(
    decoding: Iterable[int],
    positions: np.ndarray,
    pending: Mapping[int, PendingPrompt],
    buckets: Sequence[int],
    num_slots: int,
    max_target_length: int,
) -> StepPlan:
    """Lay out one step: decoding slots (at `positions[slot]`) then prompt chunks in `pending`'s
    order, in the smallest bucket that holds them all (or the largest, with the chunks cut)."""
    decode = sorted(decoding)
    want = len(decode) + sum(p.left for p in pending.values())
    rows = fit_or_largest(buckets, want)
    if len(decode) > rows:
        raise ValueError(f"{len(decode)} decoding slots exceed the largest step bucket ({rows} rows)")
    tokens = np.zeros(rows, np.int32)
    from_state = np.zeros(rows, bool)
    slots = np.full(rows, num_slots, np.int32)
    pos = np.full(rows, max_target_length, np.int32)
    k = len(decode)
    from_state[:k] = True
    slots[:k] = decode
    pos[:k] = np.minimum(positions[decode], max_target_length - 1) if k else pos[:0]
    logit_rows = list(range(k))
    emitted = list(decode)
    taken: dict[int, int] = {}
    completed = []
    at = k
    for slot, prompt in pending.items():
        n = min(prompt.left, rows - at)
        if n <= 0:
            break
        tokens[at : at + n] = prompt.ids[prompt.done : prompt.done + n]
        slots[at : at + n] = slot
        pos[at : at + n] = np.arange(prompt.done, prompt.done + n)
        taken[slot] = n
        at += n
        if n == prompt.left:
            logit_rows.append(at - 1)
            emitted.append(slot)
            completed.append(slot)
    r = min(rows, num_slots)
    lr = np.zeros(r, np.int32)
    ls = np.full(r, num_slots, np.int32)
    lr[: len(logit_rows)] = logit_rows
    ls[: len(emitted)] = emitted
    return StepPlan(tokens, from_state, slots, pos, lr, ls, tuple(emitted), taken, tuple(completed))
