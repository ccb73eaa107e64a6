"""Chunked prefill: prompts run inside the decode steps and give what a separate prefill gives."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from inference_app.engine import EngineSettings, SamplingParams
from inference_app.engine.api import TokenLogprobs
from inference_app.engine.engine import JaxEngine
from inference_app.engine.step_plan import PendingPrompt, plan_ragged
from inference_app.kernels import build
from inference_app.model.loader import LoadedModel
from tests.inference_app.engine_runs import assert_same_logprobs, decode_all, decode_logprobs, run_chunked

STEPS = 10
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a land far away, there lived a small dragon who loved",
    "def add(a, b):",
    "<|im_start|>user\nName three colours of the rainbow.<|im_end|>\n<|im_start|>assistant\n",
    "Water boils at",
]
# A step budget smaller than most prompts: prompts spill over several steps, next to decode rows.
BASE = EngineSettings(max_slots=4, max_prefill_length=32, max_target_length=64, max_step_tokens=12)

needs_kernels = pytest.mark.skipif(not build.available(), reason="the CPU kernels did not build here")


# ----- the step planner (host only) -----------------------------------------------------------


def test_plan_lays_out_decode_rows_then_chunks_in_arrival_order() -> None:
    positions = np.array([7, 0, 3, 0], np.int32)
    pending = {
        3: PendingPrompt(np.arange(100, 105, dtype=np.int32), done=2),
        1: PendingPrompt(np.arange(9, dtype=np.int32)),
    }
    plan = plan_ragged([2, 0], positions, pending, (1, 4, 8), num_slots=4, max_target_length=64)
    # decode slots 0, 2; then the rest of slot 3's prompt (3 tokens, finishing), then 3 of slot 1's
    assert plan.slots.tolist() == [0, 2, 3, 3, 3, 1, 1, 1]
    assert plan.positions.tolist() == [7, 3, 2, 3, 4, 0, 1, 2]
    assert plan.from_state.tolist() == [True, True] + [False] * 6
    assert plan.tokens[2:].tolist() == [102, 103, 104, 0, 1, 2]
    assert plan.taken == {3: 3, 1: 3} and plan.completed == (3,)
    assert plan.emitted == (0, 2, 3)  # slot 1 is still prefilling: no token for it yet
    assert plan.logit_rows.tolist() == [0, 1, 4, 0] and plan.logit_slots.tolist() == [0, 2, 3, 4]


def test_plan_pads_to_the_smallest_bucket_with_rows_that_touch_nothing() -> None:
    pending = {2: PendingPrompt(np.arange(2, dtype=np.int32))}
    plan = plan_ragged([1], np.zeros(4, np.int32), pending, (1, 4, 8), 4, 64)
    assert len(plan.slots) == 4 and plan.slots[3] == 4 and plan.positions[3] == 64  # out of range
    assert plan.emitted == (1, 2) and plan.completed == (2,)
    with pytest.raises(ValueError, match="exceed the largest step bucket"):
        plan_ragged([0, 1, 2], np.zeros(4, np.int32), {}, (1, 2), 4, 64)


# ----- the engine (SmolLM2's first 4 layers, float32) -------------------------------------------
# Paths are compared on every token's log-probability and top-5 values, not only on tokens: a KV
# row read or written in the wrong place changes those numbers even where the (degenerate) text of
# 4 layers stays the same; the greedy text of all 30 layers is checked against transformers in
# tests/inference_app/model.


@pytest.fixture(scope="module")
def model(smollm2_4_layers: LoadedModel) -> LoadedModel:
    return smollm2_4_layers


@pytest.fixture(scope="module")
def chunked(model: LoadedModel) -> JaxEngine:
    engine = JaxEngine(BASE, model)
    if not engine.chunked_prefill:
        pytest.skip("chunked prefill needs the CPU kernels")
    return engine


@pytest.fixture(scope="module")
def prompt_ids(model: LoadedModel) -> list[list[int]]:
    ids = [model.tokenizer.encode(p) for p in PROMPTS]
    assert max(map(len, ids)) > BASE.max_step_tokens  # some prompts need several steps
    return ids


@needs_kernels
def test_chunked_equals_separate_prefill_greedy(
    model: LoadedModel, chunked: JaxEngine, prompt_ids: list[list[int]]
) -> None:
    """Prompts arrive while others decode, spill over steps, and reuse freed slots."""
    separate = JaxEngine(dataclasses.replace(BASE, chunked_prefill=False, max_slots=1), model)
    assert not separate.chunked_prefill and separate.policy.kernels.cpu
    want = [decode_logprobs(separate, [ids], STEPS)[0] for ids in prompt_ids]
    got: list[list[TokenLogprobs]] = []
    sampling = [SamplingParams(logprobs=5)] * len(prompt_ids)
    run_chunked(chunked, prompt_ids, sampling, STEPS, stagger=3, logprobs=got)
    assert_same_logprobs(got, want)


@needs_kernels
def test_chunked_seeded_sampling_equals_separate_prefill(
    model: LoadedModel, chunked: JaxEngine, prompt_ids: list[list[int]]
) -> None:
    separate = JaxEngine(dataclasses.replace(BASE, chunked_prefill=False), model)
    sampling = [SamplingParams(temperature=0.9, top_p=0.9, seed=100 + i) for i in range(4)]
    want = decode_all(separate, prompt_ids[:4], sampling, STEPS)
    assert run_chunked(chunked, prompt_ids[:4], sampling, STEPS) == want


@needs_kernels
def test_release_during_prefill_drops_the_rest_of_the_prompt(
    chunked: JaxEngine, prompt_ids: list[list[int]]
) -> None:
    before = run_chunked(chunked, [prompt_ids[0]], [SamplingParams()], 4)  # in slot 0
    unseen = max(prompt_ids, key=len)[::-1]  # no prefix of it is cached: it needs several steps
    chunked.add_prompt(0, unseen, SamplingParams())
    assert 0 not in chunked.generate().slots  # only part of the long prompt ran
    chunked.release(0)  # e.g. the client went away
    after = run_chunked(chunked, [prompt_ids[0]], [SamplingParams()], 4)  # slot 0 again
    assert after == before and not chunked._pending


@needs_kernels
@pytest.mark.parametrize(
    "slot,ids,match",
    [
        (4, [1, 2], r"slot 4 out of range"),
        (0, [], "prompt is empty"),
        (0, [1, 10**6], "token ids out of range"),
        (0, list(range(1, 40)), "limit is max_prefill_length=32"),
    ],
)
def test_bad_add_prompt_is_a_clear_error(chunked: JaxEngine, slot: int, ids: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        chunked.add_prompt(slot, ids, SamplingParams())
    assert not chunked._pending  # nothing half-added


@needs_kernels
def test_busy_slot_and_engine_without_chunking_are_clear_errors(
    chunked: JaxEngine, model: LoadedModel
) -> None:
    chunked.add_prompt(1, [1, 2, 3], SamplingParams())
    with pytest.raises(ValueError, match="slot 1 is busy"):
        chunked.add_prompt(1, [4, 5], SamplingParams())
    chunked.release(1)
    plain = JaxEngine(dataclasses.replace(BASE, chunked_prefill=False), model)
    with pytest.raises(RuntimeError, match="no chunked prefill"):
        plain.add_prompt(0, [1, 2], SamplingParams())
