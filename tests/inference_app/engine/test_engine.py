"""Engine behaviour on SmolLM2: batch invariance, int8 KV agreement, sampling, input errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from inference_app.engine import Engine, EngineSettings, SamplingParams
from inference_app.engine.api import batched_prefill, chunked_prefill
from inference_app.engine.engine import JaxEngine
from inference_app.engine.step_plan import SlotLayout
from inference_app.model.loader import LoadedModel
from tests.inference_app.engine_runs import decode_all, first_layers

STEPS = 12
PROMPTS = [
    "The capital of France is",
    "1, 2, 3, 4,",
    "def add(a, b):",
    "Once upon a time, in a land far away, there lived a small dragon who",
    "The quick brown fox",
    "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n",
    "Water boils at",
    "In 1969, the first humans",
]
BASE = EngineSettings(max_slots=8, max_prefill_length=32, max_target_length=64)


@pytest.fixture(scope="module")
def model(smollm2: LoadedModel) -> LoadedModel:
    return smollm2


@pytest.fixture(scope="module")
def engine8(model: LoadedModel) -> JaxEngine:
    return JaxEngine(BASE, model)


@pytest.fixture(scope="module")
def prompt_ids(model: LoadedModel) -> list[list[int]]:
    return [model.tokenizer.encode(p) for p in PROMPTS]


@pytest.fixture(scope="module")
def greedy8(engine8: JaxEngine, prompt_ids: list[list[int]]) -> list[list[int]]:
    """Greedy tokens of all prompts decoded together in one batch of 8."""
    return decode_all(engine8, prompt_ids, [SamplingParams()] * len(prompt_ids), STEPS)


def test_satisfies_engine_protocol(engine8: JaxEngine) -> None:
    assert isinstance(engine8, Engine)
    assert batched_prefill(engine8) is engine8
    assert (chunked_prefill(engine8) is engine8) is engine8.chunked_prefill  # on: the CPU default
    assert engine8.prefill_buckets[-1] == engine8.max_prefill_length == 32


def test_batch1_equals_batch8_mixed_lengths(
    engine8: JaxEngine, prompt_ids: list[list[int]], greedy8: list[list[int]]
) -> None:
    """Each prompt alone (1-row steps, the batch-1 path) gives the tokens it got among 8."""
    assert len({len(p) for p in prompt_ids}) > 4  # really mixed lengths
    for ids, expected in zip(prompt_ids, greedy8, strict=True):
        assert decode_all(engine8, [ids], [SamplingParams()], STEPS) == [expected]


def test_slot_reuse_after_release_is_clean(
    engine8: JaxEngine, prompt_ids: list[list[int]], greedy8: list[list[int]]
) -> None:
    """A slot that held a longer request gives the same tokens to a new, shorter one."""
    decode_all(engine8, [prompt_ids[3]], [SamplingParams()], 2 * STEPS)
    assert decode_all(engine8, [prompt_ids[0]], [SamplingParams()], STEPS) == [greedy8[0]]


@pytest.mark.slow  # the default suite measures int8 KV agreement in test_sharding.py
def test_int8_kv_cache_agreement(
    model: LoadedModel, prompt_ids: list[list[int]], greedy8: list[list[int]]
) -> None:
    """int8 KV (per token-and-head scales) vs fp32: greedy agreement is measured, not assumed."""
    int8 = JaxEngine(dataclasses.replace(BASE, kv_dtype="int8"), model)
    assert int8._cache[0]["k"].dtype == np.int8
    got = decode_all(int8, prompt_ids, [SamplingParams()] * len(prompt_ids), STEPS)
    same = sum(a == b for r, g in zip(greedy8, got, strict=True) for a, b in zip(r, g, strict=True))
    rate = same / (len(got) * STEPS)
    print(f"int8 KV greedy agreement with fp32 KV: {rate:.3f} over {len(got) * STEPS} tokens")
    assert all(r[0] == g[0] for r, g in zip(greedy8, got, strict=True))  # prefill is fp32 either way
    assert rate >= 0.75


def test_seeded_sampling_is_reproducible_and_batch_independent(
    engine8: JaxEngine, prompt_ids: list[list[int]]
) -> None:
    sp = SamplingParams(temperature=0.9, top_k=50, top_p=0.95, seed=1234)
    alone = decode_all(engine8, [prompt_ids[4]], [sp], STEPS)[0]
    mixed = decode_all(
        engine8, [prompt_ids[0], prompt_ids[4]], [SamplingParams(temperature=1.0, seed=7), sp], STEPS
    )[1]
    assert alone == mixed
    other = decode_all(engine8, [prompt_ids[4]], [dataclasses.replace(sp, seed=99)], STEPS)[0]
    assert other != alone


def test_top_k_one_is_greedy(
    engine8: JaxEngine, prompt_ids: list[list[int]], greedy8: list[list[int]]
) -> None:
    top1 = decode_all(engine8, [prompt_ids[1]], [SamplingParams(temperature=1.5, top_k=1, seed=3)], STEPS)
    assert top1 == [greedy8[1]]


@pytest.mark.parametrize(
    ("ids", "sp", "message"),
    [
        ([], SamplingParams(), "prompt is empty"),
        (list(range(33)), SamplingParams(), "max_prefill_length=32"),
        ([1, 10**6], SamplingParams(), "out of range"),
        ([1, 2], SamplingParams(temperature=-1.0), "temperature"),
        ([1, 2], SamplingParams(temperature=1.0, top_p=0.0), "top_p"),
        ([1, 2], SamplingParams(temperature=1.0, top_k=-2), "top_k"),
    ],
)
def test_bad_prefill_input_is_a_clear_error(
    engine8: JaxEngine, ids: list[int], sp: SamplingParams, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        engine8.prefill(ids, sp)


def test_bad_slot_is_a_clear_error(engine8: JaxEngine) -> None:
    prefix = engine8.prefill([1, 2, 3], SamplingParams())
    with pytest.raises(ValueError, match="slot 8 out of range"):
        engine8.insert(prefix, 8)


def test_settings_errors_name_the_field(model: LoadedModel) -> None:
    with pytest.raises(ValueError, match="max_target_length"):
        JaxEngine(dataclasses.replace(BASE, max_target_length=32), model)
    with pytest.raises(ValueError, match=r"EngineSettings\.model 'smollm2-135m' with a model_path"):
        JaxEngine(dataclasses.replace(BASE, model_path="/x.gguf"), model)
    with pytest.raises(ValueError, match="ici_tensor_parallelism"):
        JaxEngine(dataclasses.replace(BASE, ici_tensor_parallelism=3), model)
    with pytest.raises(ValueError, match="disaggregated"):
        JaxEngine(dataclasses.replace(BASE, mode="disaggregated"), model)


def test_prefill_many_equals_single_prefills(engine8: JaxEngine, prompt_ids: list[list[int]]) -> None:
    prompts = prompt_ids[:3]  # mixed lengths, batch padded to 4
    many = engine8.prefill_many(prompts, [SamplingParams()] * 3)
    for ids, got in zip(prompts, many, strict=True):
        one = engine8.prefill(ids, SamplingParams())
        assert (got.first_token, got.length) == (one.first_token, one.length)
        n = one.length
        np.testing.assert_allclose(
            np.asarray(got.kv[5]["k"])[:, :, :n], np.asarray(one.kv[5]["k"])[:, :, :n], atol=1e-4
        )


def test_step_output_stays_valid_after_insert_and_generate(
    engine8: JaxEngine, prompt_ids: list[list[int]]
) -> None:
    """The orchestrator copies StepOutput.tokens to host asynchronously, after later calls."""
    engine8.insert(engine8.prefill(prompt_ids[0], SamplingParams()), 0)
    step = engine8.generate()
    engine8.insert(engine8.prefill(prompt_ids[1], SamplingParams()), 1)
    engine8.generate()
    assert np.asarray(step.tokens).shape == (engine8.max_slots,)
    engine8.release(0)
    engine8.release(1)


def test_decode_step_rows_cover_the_highest_active_slot(
    model: LoadedModel, prompt_ids: list[list[int]], greedy8: list[list[int]]
) -> None:
    """Without chunked prefill, row i of a step is slot i: steps compute a row bucket (1, 4, 8
    here) and give the same tokens as the batch of 8."""
    engine = JaxEngine(dataclasses.replace(BASE, chunked_prefill=False), model)
    assert isinstance(engine.layout, SlotLayout) and engine.layout.row_buckets == (1, 4, 8)
    engine.insert(engine.prefill(prompt_ids[0], SamplingParams()), 0)
    assert engine.next_step()[1].rows == 1
    engine.insert(engine.prefill(prompt_ids[1], SamplingParams()), 2)
    assert engine.next_step()[1].rows == 4
    engine.insert(engine.prefill(prompt_ids[2], SamplingParams()), 5)
    assert engine.next_step()[1].rows == 8
    for slot in (0, 2, 5):
        engine.release(slot)
    assert engine.next_step()[1].rows == 1
    # Slot 0 alone (1-row steps) matches the batch of 8 (ragged steps of the default engine).
    assert decode_all(engine, [prompt_ids[0]], [SamplingParams()], STEPS) == [greedy8[0]]


def test_prefill_batch_rows_cap_padded_tokens(model: LoadedModel) -> None:
    settings = dataclasses.replace(BASE, max_prefill_length=512, max_target_length=600, max_prefill_batch=8)
    engine = JaxEngine(settings, model)
    assert [engine.prefill_batch_rows(b) for b in engine.prefill_buckets] == [8, 8, 4, 2, 1]
    assert JaxEngine(BASE, model).prefill_batch_rows(32) == 1  # the default: no batching
    with pytest.raises(ValueError, match="max_prefill_batch must be >= 1"):
        JaxEngine(dataclasses.replace(BASE, max_prefill_batch=0), model)


@pytest.mark.parametrize("chunked", [False, True])
def test_warmup_compiles_every_step_a_request_reaches(model: LoadedModel, chunked: bool) -> None:
    """Warm-up runs each step shape with padding rows, and the greedy and the sampling choice of
    each count of sampled rows; real steps then compile nothing new. Without chunked prefill and
    kernels: 2 row buckets x 2 attention buckets.
    (What is compiled does not depend on the depth: 1 of the 30 layers, to compile faster.)"""
    model = first_layers(model, 1)
    settings = dataclasses.replace(
        BASE,
        max_slots=2,
        max_prefill_length=16,
        max_target_length=160,
        max_step_tokens=16,
        chunked_prefill=chunked,
        cpu_kernels=chunked,
    )
    engine = JaxEngine(settings, model)
    assert engine.chunked_prefill is chunked
    engine.warmup()
    assert engine._step_fn._cache_size() == len(engine.layout.shapes()) == (6 if chunked else 4)
    sampled_rows = {min(shape.rows, engine.max_slots) for shape in engine.layout.shapes()}
    assert engine._choose_fn._cache_size() == 2 * len(sampled_rows)
    functions = (engine._prefill_fn, engine._first_fn, engine._insert_fn, engine._step_fn, engine._choose_fn)
    compiled = [f._cache_size() for f in functions]
    ids = [1, 504, 3458, 282]
    greedy, sampled = SamplingParams(), SamplingParams(temperature=1.0, seed=5)
    if chunked:
        engine.add_prompt(1, ids, sampled)
        while 1 not in (engine.generate().slots or ()):
            pass
    else:
        decode_all(engine, [ids, ids], [greedy, sampled], 4)
        decode_all(engine, [ids], [greedy], 4)
    assert [f._cache_size() for f in functions] == compiled
