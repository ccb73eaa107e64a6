"""The engine over its paged KV cache: blocks follow the sequences, admission is by blocks, and a
prefix found in the prefix cache is not computed again yet changes no token.

The oracle for every output here is the same engine with prefix caching off (itself checked
against transformers by the golden tests), so what is tested is that sharing blocks is exact.
"""

from __future__ import annotations

import dataclasses

import pytest

from inference_app.engine import EngineSettings, SamplingParams
from inference_app.engine.api import TokenLogprobs
from inference_app.engine.engine import JaxEngine
from inference_app.engine.kv_blocks import OutOfBlocks
from inference_app.kernels import build
from inference_app.model.loader import LoadedModel
from tests.inference_app.engine_runs import assert_same_logprobs, run_chunked

pytestmark = pytest.mark.skipif(not build.available(), reason="the paged cache needs the CPU kernels")

STEPS = 6
BLOCK = 8
# Small blocks so that a short system prompt fills several; 4 slots x 96 tokens of cache.
BASE = EngineSettings(
    max_slots=4, max_prefill_length=80, max_target_length=96, max_step_tokens=16, kv_block_size=BLOCK
)
SYSTEM = (
    "<|im_start|>system\nYou are a careful assistant. Answer in one short sentence, and never "
    "make up facts you are not sure of.<|im_end|>\n"
)
QUESTIONS = ["What is the capital of France?", "Name a primary colour.", "What is two plus two?"]


def chat(question: str) -> str:
    return f"{SYSTEM}<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def model(smollm2_4_layers: LoadedModel) -> LoadedModel:
    """SmolLM2's first 4 layers: what is cached is compared on every token's logprobs (numbers that
    a wrong KV block changes even where 4 layers' degenerate text would not)."""
    return smollm2_4_layers


@pytest.fixture(scope="module")
def prompts(model: LoadedModel) -> list[list[int]]:
    return [model.tokenizer.encode(chat(q)) for q in QUESTIONS]


def engine(model: LoadedModel, **changes: object) -> JaxEngine:
    e = JaxEngine(dataclasses.replace(BASE, **changes), model)  # type: ignore[arg-type]
    assert e.paged is not None and e.kv_blocks is not None, "the CPU engine prefills over a paged cache"
    return e


def test_a_cached_prefix_is_not_computed_again_and_changes_no_token(
    model: LoadedModel, prompts: list[list[int]]
) -> None:
    shared = len(model.tokenizer.encode(SYSTEM))
    assert shared >= 3 * BLOCK  # several full blocks of system prompt to share
    sp = SamplingParams(logprobs=5)
    want: list[list[TokenLogprobs]] = []
    run_chunked(engine(model, prefix_caching=False), prompts, [sp] * 3, STEPS, logprobs=want)

    on = engine(model)
    assert on.kv_blocks is not None
    first: list[list[TokenLogprobs]] = []
    run_chunked(on, prompts[:1], [sp], STEPS, max_new_tokens=STEPS, logprobs=first)
    # The next requests find the system prompt's full blocks: their prefill starts after them.
    on.add_prompt(0, prompts[1], sp, STEPS)
    assert on._pending[0].done >= (shared // BLOCK - 1) * BLOCK
    on.release(0)
    rest: list[list[TokenLogprobs]] = []
    run_chunked(on, prompts[1:], [sp] * 2, STEPS, stagger=2, max_new_tokens=STEPS, logprobs=rest)
    assert_same_logprobs(first + rest, want)
    stats = on.kv_blocks.prefix_stats
    assert stats.hit_tokens >= 3 * (shared // BLOCK - 1) * BLOCK and stats.queried_tokens > stats.hit_tokens


def test_a_prompt_sharing_part_of_a_block_starts_from_a_copy_and_changes_no_token(
    model: LoadedModel, prompts: list[list[int]]
) -> None:
    """The same prompt again, a longer one, and one that diverges inside the first block: each
    starts after what it shares with the first prompt, its partly shared block a copy."""
    block = 32
    first = prompts[0]
    longer = first + model.tokenizer.encode(" Answer in French, please.")
    other = prompts[1]
    common = next(i for i, (a, b) in enumerate(zip(first, other, strict=False)) if a != b)
    assert 8 <= common < block and len(first) % block > 8  # partial blocks worth a copy
    cases = [list(first), longer, other]
    sp = SamplingParams(logprobs=5)
    want: list[list[TokenLogprobs]] = []
    run_chunked(
        engine(model, prefix_caching=False, kv_block_size=block),
        [first, *cases],
        [sp] * 4,
        STEPS,
        logprobs=want,
    )

    on = engine(model, kv_block_size=block)
    got: list[list[TokenLogprobs]] = []
    run_chunked(on, [first], [sp], STEPS, max_new_tokens=STEPS, logprobs=got)
    for ids, shared in zip(cases, [len(first) - 1, len(first), common], strict=True):
        on.add_prompt(0, ids, sp, STEPS)
        assert on._pending[0].done == shared
        on.release(0)  # its copy is still queued: it lands in a free block before the next step
    rest: list[list[TokenLogprobs]] = []
    run_chunked(on, cases, [sp] * 3, STEPS, stagger=3, max_new_tokens=STEPS, logprobs=rest)
    assert_same_logprobs(got + rest, want)


def test_blocks_are_taken_as_the_sequence_grows_and_all_return_on_release(
    model: LoadedModel, prompts: list[list[int]]
) -> None:
    e = engine(model, prefix_caching=False)
    kv = e.kv_blocks
    assert kv is not None
    total = kv.available_blocks
    ids = prompts[0]
    e.add_prompt(2, ids, SamplingParams(), STEPS)
    assert kv.available_blocks == total - kv.blocks_for(len(ids) + STEPS)  # the worst case, reserved
    assert (kv.tables[2] >= 0).sum() == 0  # taken only when written
    while 2 not in e.generate().slots:  # the prompt's chunks
        pass
    assert (kv.tables[2] >= 0).sum() == kv.blocks_for(len(ids))
    for _ in range(STEPS - 1):
        e.generate()
    assert (kv.tables[2] >= 0).sum() == kv.blocks_for(len(ids) + STEPS - 1)
    e.release(2)
    assert kv.available_blocks == total and (kv.tables == -1).all()


def test_admission_is_bounded_by_free_blocks_not_slots(model: LoadedModel, prompts: list[list[int]]) -> None:
    # A cache of 12 blocks (96 tokens): one request of ~60 tokens + 30 new fits, a second does not.
    bytes_per_token = 2 * model.config.num_layers * model.config.num_kv_heads * model.config.head_dim * 4
    e = engine(model, kv_cache_memory=96 * bytes_per_token)
    assert e.kv_blocks is not None and e.kv_blocks.pool.num_blocks == 12 and e.max_slots == 4
    e.add_prompt(0, prompts[0], SamplingParams(), 30)
    assert not e.can_admit(prompts[1], 30) and e.can_admit(prompts[1][:8], 8)
    with pytest.raises(OutOfBlocks, match="KV blocks"):
        e.add_prompt(1, prompts[1], SamplingParams(), 30)
    e.release(0)
    assert e.can_admit(prompts[1], 30)


def test_a_sequence_may_use_the_models_full_context_by_default(model: LoadedModel) -> None:
    e = JaxEngine(
        EngineSettings(kv_cache_memory=400 * 2**20, kv_block_size=128, compilation_cache_dir=None), model
    )
    assert e.max_target_length == model.config.max_position_embeddings  # 8192 for SmolLM2
    assert e.max_prefill_length == e.max_target_length - 1
    assert e.kv_blocks is not None and e.kv_blocks.max_blocks * 128 >= e.max_target_length
