"""Test-only fault injection: an Engine wrapper that raises for requests whose prompt has a marker.

Sits between the orchestrator and a real (or fake) engine. Part of `inference_app.testing`, which
the product image leaves out.

Used by the fault tests (in-process through `create_app(config, engine=FaultInjectingEngine(...))`,
and in a real server process through `serve --inject-fault STAGE:MARKER`). Stages:

- `prefill`: that request's prefill raises -> only that request fails (HTTP 500), serving goes on.
- `insert`: inserting that request's KV into a slot raises -> only that request fails.
  (With chunked prefill both stages fail `add_prompt`, where that request's prefill begins.)
- `generate`: the first decode step that includes that request raises -> the device loop fails,
  every in-flight request fails and `/healthcheck` turns 503 (the process stays up).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import numpy as np

from inference_app.engine.api import (
    BatchedPrefill,
    ChunkedPrefill,
    Engine,
    Prefix,
    SamplingParams,
    StepOutput,
    Tokenizer,
    TokenLogprobs,
    TokenMasks,
    prompt_scoring,
    token_masks,
)
from inference_app.engine.settings import EngineSettings

FaultStage = Literal["prefill", "insert", "generate"]
FAULT_STAGES: tuple[str, ...] = get_args(FaultStage)


class InjectedFault(RuntimeError):
    """Raised on purpose by `FaultInjectingEngine`."""


@runtime_checkable
class WrappableEngine(Engine, BatchedPrefill, ChunkedPrefill, Protocol):
    """An engine with both optional capabilities (the JAX engine and the test fake have them)."""


def parse_fault_spec(spec: str) -> tuple[FaultStage, str]:
    """'prefill:MARKER' -> ('prefill', 'MARKER'), with an error that says the accepted form."""
    stage, sep, marker = spec.partition(":")
    if not sep or not marker or stage not in FAULT_STAGES:
        raise ValueError(
            f"--inject-fault expects STAGE:MARKER with STAGE one of {', '.join(FAULT_STAGES)} "
            f"and a non-empty MARKER, got {spec!r}"
        )
    return stage, marker  # type: ignore[return-value]


class FaultInjectingEngine:
    """Delegates to `inner`, raising `InjectedFault` at `stage` for prompts containing `marker`.

    It offers what `inner` offers: both capabilities, with chunked prefill on exactly when it is
    on in `inner`, and token masks and prompt scoring exactly when `inner` has them (an instance is
    of the subclass that adds those), so the orchestrator picks the same code path as for `inner`
    alone and a wrapped server answers structured outputs and `echo` logprobs as an unwrapped one.
    """

    def __new__(cls, inner: Engine, *args: Any, **kwargs: Any) -> FaultInjectingEngine:
        if cls is FaultInjectingEngine:
            masks, scoring = token_masks(inner) is not None, prompt_scoring(inner) is not None
            cls = {
                (True, True): _FaultsWithMasksAndScoring,
                (True, False): _FaultsWithMasks,
                (False, True): _FaultsWithScoring,
            }.get((masks, scoring), FaultInjectingEngine)
        return super().__new__(cls)

    def __init__(self, inner: Engine, stage: FaultStage, marker: str) -> None:
        if stage not in FAULT_STAGES:
            raise ValueError(f"stage must be one of {FAULT_STAGES}, got {stage!r}")
        if not isinstance(inner, WrappableEngine):
            raise TypeError(f"{type(inner).__name__} lacks prefill_many or add_prompt; it cannot be wrapped")
        self.inner: WrappableEngine = inner
        self.stage = stage
        self.marker = marker
        self.settings: EngineSettings = inner.settings
        self.tokenizer: Tokenizer = inner.tokenizer
        self.mode = inner.mode
        self.max_slots = inner.max_slots
        self.max_prefill_length = inner.max_prefill_length
        self.max_target_length = inner.max_target_length
        self.prefill_buckets: tuple[int, ...] = inner.prefill_buckets
        self.chunked_prefill = inner.chunked_prefill
        self.step_buckets: tuple[int, ...] = inner.step_buckets
        # Prefixes that came from marked prompts, by id() with a weak reference against id reuse.
        self._marked: dict[int, weakref.ref[Prefix]] = {}
        self._marked_slots: set[int] = set()

    def prefill(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> Prefix:
        marked = self.marker in self.tokenizer.decode(list(prompt_ids))
        if marked and self.stage == "prefill":
            raise InjectedFault(f"injected fault in prefill (prompt contains {self.marker!r})")
        prefix = self.inner.prefill(prompt_ids, sampling)
        if marked:
            self._marked[id(prefix)] = weakref.ref(prefix)
        return prefix

    def prefill_bucket(self, length: int) -> int:
        return self.inner.prefill_bucket(length)

    def prefill_batch_rows(self, bucket: int) -> int:
        return self.inner.prefill_batch_rows(bucket)

    def prefill_many(
        self, prompts: Sequence[Sequence[int]], samplings: Sequence[SamplingParams]
    ) -> list[Prefix]:
        """A batch with a marked prompt fails as a whole (the orchestrator then retries one by one)."""
        return self._prefill_batch(prompts, lambda: self.inner.prefill_many(prompts, samplings))

    def _prefill_batch(
        self, prompts: Sequence[Sequence[int]], run: Callable[[], list[Prefix]]
    ) -> list[Prefix]:
        marked = [self.marker in self.tokenizer.decode(list(ids)) for ids in prompts]
        if any(marked) and self.stage == "prefill":
            raise InjectedFault(f"injected fault in prefill (a prompt of the batch contains {self.marker!r})")
        prefixes = run()
        for prefix, m in zip(prefixes, marked, strict=True):
            if m:
                self._marked[id(prefix)] = weakref.ref(prefix)
        return prefixes

    def _take_mark(self, prefix: Prefix) -> bool:
        ref = self._marked.pop(id(prefix), None)
        return ref is not None and ref() is prefix

    def transfer(self, prefix: Prefix) -> Prefix:
        out = self.inner.transfer(prefix)
        if self._take_mark(prefix):
            self._marked[id(out)] = weakref.ref(out)
        return out

    def insert(self, prefix: Prefix, slot: int) -> None:
        marked = self._take_mark(prefix)
        if marked and self.stage == "insert":
            raise InjectedFault(f"injected fault in insert (prompt contains {self.marker!r})")
        self.inner.insert(prefix, slot)
        if marked:
            self._marked_slots.add(slot)

    def can_admit(self, prompt_ids: Sequence[int], max_new_tokens: int) -> bool:
        return self.inner.can_admit(prompt_ids, max_new_tokens)

    def add_prompt(
        self,
        slot: int,
        prompt_ids: Sequence[int],
        sampling: SamplingParams,
        max_new_tokens: int | None = None,
    ) -> None:
        marked = self.marker in self.tokenizer.decode(list(prompt_ids))
        if marked and self.stage in ("prefill", "insert"):
            raise InjectedFault(f"injected fault in {self.stage} (prompt contains {self.marker!r})")
        self.inner.add_prompt(slot, prompt_ids, sampling, max_new_tokens)
        if marked:
            self._marked_slots.add(slot)

    def generate(self) -> StepOutput:
        if self._marked_slots and self.stage == "generate":
            raise InjectedFault(f"injected fault in generate (a slot holds a prompt with {self.marker!r})")
        return self.inner.generate()

    def release(self, slot: int) -> None:
        self._marked_slots.discard(slot)
        self.inner.release(slot)

    def warmup(self) -> None:
        self.inner.warmup()


class _FaultsWithMasks(FaultInjectingEngine):
    """The wrapper of an engine with `TokenMasks`: a masked prefill fails as `prefill_many` does."""

    @property
    def _masks(self) -> TokenMasks:
        masks = token_masks(self.inner)
        assert masks is not None  # __new__ picked this class for it
        return masks

    @property
    def mask_vocab(self) -> int:
        return self._masks.mask_vocab

    def set_token_mask(self, slot: int, bitmask: np.ndarray | None) -> None:
        self._masks.set_token_mask(slot, bitmask)

    def prefill_masked(
        self, prompts: Sequence[Sequence[int]], samplings: Sequence[SamplingParams], bitmasks: np.ndarray
    ) -> list[Prefix]:
        masks = self._masks
        return self._prefill_batch(prompts, lambda: masks.prefill_masked(prompts, samplings, bitmasks))


class _FaultsWithScoring(FaultInjectingEngine):
    """The wrapper of an engine with `PromptScoring` (no fault: scoring touches no slot)."""

    def score_prompt(self, prompt_ids: Sequence[int], top: int) -> list[TokenLogprobs]:
        scoring = prompt_scoring(self.inner)
        assert scoring is not None  # __new__ picked this class for it
        return scoring.score_prompt(prompt_ids, top)


class _FaultsWithMasksAndScoring(_FaultsWithMasks, _FaultsWithScoring):
    pass
