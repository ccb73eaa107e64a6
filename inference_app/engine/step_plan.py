"""What one step computes: the host-side layout of its token rows, and the compiled shape it runs.

Every `generate()` is one `steps.step` over a bucket of token rows. A `StepLayout`, chosen once
by the engine's policy, decides which rows a step holds and which compiled `StepShape` runs it:

- `RaggedLayout` (chunked prefill; needs the ragged attention kernel): the decoding slots first
  (one token each, read on device from the previous step's output), then chunks of waiting
  prompts, first come first served, up to the step's token budget. A prompt longer than what is
  left spills into the next steps. The step samples a token for every decoding slot and for each
  prompt whose last token ran in it (its first generated token), so a new request starts
  decoding on the step after its prefill ends, with no separate prefill pass pausing the others.
- `SlotLayout` (prompts prefilled separately and inserted): row i is slot i, over the smallest
  row bucket covering the highest active slot, attending to the smallest cache prefix covering
  every active position.

Warm-up compiles `layout.shapes()` with `padding_plan` rows, which touch nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

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
    # Slots that get a token from this step, in row order; None: every active slot.
    emitted: tuple[int, ...] | None
    taken: Mapping[int, int]  # slot -> prompt tokens run this step
    completed: tuple[int, ...]  # slots whose prompt finished prefilling in this step


@dataclass(frozen=True)
class SlotView:
    """What a layout plans a step from: the engine's host-side slot state (viewed, not copied)."""

    decoding: Collection[int]  # slots that decode, each at positions[slot]
    positions: np.ndarray  # int32 [max_slots]: where each slot's next token goes
    pending: Mapping[int, PendingPrompt]  # slot -> prompt being prefilled, in arrival order


@dataclass(frozen=True)
class StepShape:
    """What a compiled step is specialised on: its row count and the static step arguments."""

    rows: int  # token rows N
    attn_len: int  # cache entries attention may read ("slot" attention; the kernel reads in place)


class StepLayout(Protocol):
    """How the engine lays out its steps (the one variable part of `generate` and `warmup`)."""

    def shapes(self) -> tuple[StepShape, ...]:
        """Every shape a step may take (compiled by warm-up)."""
        ...

    def plan(self, slots: SlotView) -> tuple[StepPlan, StepShape]:
        """The next step's rows and compiled shape."""
        ...


@dataclass(frozen=True)
class RaggedLayout:
    """Decode rows packed first, then prompt chunks, in the smallest of `buckets` that holds them."""

    buckets: tuple[int, ...]  # step row counts (`buckets.step_rows`)
    num_slots: int
    max_target_length: int

    def shapes(self) -> tuple[StepShape, ...]:
        return tuple(StepShape(rows, self.max_target_length) for rows in self.buckets)

    def plan(self, slots: SlotView) -> tuple[StepPlan, StepShape]:
        plan = plan_ragged(
            slots.decoding,
            slots.positions,
            slots.pending,
            self.buckets,
            self.num_slots,
            self.max_target_length,
        )
        return plan, StepShape(len(plan.slots), self.max_target_length)


@dataclass(frozen=True)
class SlotLayout:
    """Row i is slot i; rows and attention length are the smallest buckets covering the active slots."""

    row_buckets: tuple[int, ...]
    attention_buckets: tuple[int, ...]
    num_slots: int
    max_target_length: int

    def shapes(self) -> tuple[StepShape, ...]:
        return tuple(StepShape(rows, attn) for rows in self.row_buckets for attn in self.attention_buckets)

    def plan(self, slots: SlotView) -> tuple[StepPlan, StepShape]:
        if slots.pending:
            raise ValueError("a slot-layout step cannot run prompt chunks")
        rows = fit_or_largest(self.row_buckets, 1 + max(slots.decoding, default=0))
        furthest = max((int(slots.positions[i]) for i in slots.decoding), default=0)
        shape = StepShape(rows, fit_or_largest(self.attention_buckets, furthest + 1))
        every = np.arange(rows, dtype=np.int32)
        plan = StepPlan(
            tokens=np.zeros(rows, np.int32),
            from_state=np.ones(rows, bool),
            slots=every,
            positions=np.minimum(slots.positions[:rows], self.max_target_length - 1).astype(np.int32),
            logit_rows=every,
            logit_slots=every,
            emitted=None,
            taken={},
            completed=(),
        )
        return plan, shape


def plan_ragged(
    decoding: Collection[int],
    positions: np.ndarray,
    pending: Mapping[int, PendingPrompt],
    buckets: Sequence[int],
    num_slots: int,
    max_target_length: int,
) -> StepPlan:
    """Lay out one step: decoding slots (at `positions[slot]`) then prompt chunks in `pending`'s
    order, in the smallest bucket that holds them all (or the largest, with the chunks cut)."""
    decode = sorted(decoding)
    rows = fit_or_largest(buckets, len(decode) + sum(p.left for p in pending.values()))
    if len(decode) > rows:
        raise ValueError(f"{len(decode)} decoding slots exceed the largest step bucket ({rows} rows)")
    plan = padding_plan(rows, num_slots, max_target_length)
    k = len(decode)
    plan.from_state[:k] = True
    plan.slots[:k] = decode
    plan.positions[:k] = np.minimum(positions[decode], max_target_length - 1) if k else plan.positions[:0]
    logit_rows = list(range(k))
    emitted = list(decode)
    taken: dict[int, int] = {}
    completed = []
    at = k
    for slot, prompt in pending.items():
        n = min(prompt.left, rows - at)
        if n <= 0:
            break
        plan.tokens[at : at + n] = prompt.ids[prompt.done : prompt.done + n]
        plan.slots[at : at + n] = slot
        plan.positions[at : at + n] = np.arange(prompt.done, prompt.done + n)
        taken[slot] = n
        at += n
        if n == prompt.left:
            logit_rows.append(at - 1)
            emitted.append(slot)
            completed.append(slot)
    plan.logit_rows[: len(logit_rows)] = logit_rows
    plan.logit_slots[: len(emitted)] = emitted
    return dataclasses.replace(plan, emitted=tuple(emitted), taken=taken, completed=tuple(completed))


def padding_plan(rows: int, num_slots: int, max_target_length: int) -> StepPlan:
    """`rows` padding rows and min(rows, num_slots) padding sampled rows: a step that computes
    but reads and writes nothing (warm-up compiles each shape with one)."""
    r = min(rows, num_slots)
    return StepPlan(
        tokens=np.zeros(rows, np.int32),
        from_state=np.zeros(rows, bool),
        slots=np.full(rows, num_slots, np.int32),
        positions=np.full(rows, max_target_length, np.int32),
        logit_rows=np.zeros(r, np.int32),
        logit_slots=np.full(r, num_slots, np.int32),
        emitted=(),
        taken={},
        completed=(),
    )
