"""Token masks in the engine's steps (structured outputs), on the tiny random Llama (SmolLM2's
vocabulary; it compiles in seconds, SmolLM2 in minutes): a constrained slot only ever
samples tokens its mask allows (first token included, from a separate prefill or a chunked one),
its log-probabilities stay the raw distribution's, and an unconstrained slot in the same steps
gets exactly the tokens it gets without a masked neighbour."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from inference_app.engine import EngineSettings, SamplingParams
from inference_app.engine.api import token_masks
from inference_app.engine.engine import JaxEngine, model_for
from inference_app.model.loader import LoadedModel

BASE = EngineSettings(max_slots=2, max_prefill_length=32, max_target_length=64, max_step_tokens=16)
STEPS = 6
FREE, MASKED = 0, 1  # slots


@pytest.fixture(scope="module")
def model(tiny_llama_dir: Path) -> LoadedModel:
    return model_for(dataclasses.replace(BASE, model=None, model_path=str(tiny_llama_dir)))


def make_engine(model: LoadedModel, chunked: bool) -> JaxEngine:
    settings = dataclasses.replace(BASE, model=None, model_path="tiny", chunked_prefill=chunked)
    engine = JaxEngine(settings, model)
    if chunked and not engine.chunked_prefill:
        pytest.skip("chunked prefill needs the CPU kernels")
    return engine


def bitmask(allowed: np.ndarray, vocab: int) -> np.ndarray:
    """int32 [ceil(vocab/32)] with bit t%32 of word t//32 set for each allowed token t."""
    bits = np.zeros((vocab + 31) // 32 * 32, np.uint8)
    bits[allowed] = 1
    return np.packbits(bits, bitorder="little").view(np.int32)


def run(
    engine: JaxEngine,
    prompts: dict[int, list[int]],
    sampling: dict[int, SamplingParams],
    allowed: list[np.ndarray] | None,
) -> dict[int, list[int]]:
    """STEPS tokens per slot; slot MASKED (when `allowed` is given) samples token i from allowed[i].
    Also checks every masked token's log-probabilities against the same step's raw distribution."""
    vocab = engine.mask_vocab
    out: dict[int, list[int]] = {slot: [] for slot in prompts}
    masked = allowed is not None and MASKED in prompts
    for slot, ids in prompts.items():
        if engine.chunked_prefill:
            engine.add_prompt(slot, ids, sampling[slot])
        else:
            rows = np.stack([bitmask(allowed[0], vocab)]) if masked and slot == MASKED else None
            prefix = (
                engine.prefill_masked([ids], [sampling[slot]], rows)[0]
                if rows is not None
                else engine.prefill(ids, sampling[slot])
            )
            engine.insert(prefix, slot)
            out[slot].append(prefix.first_token)
    while any(len(t) < STEPS for t in out.values()):
        if masked:
            engine.set_token_mask(MASKED, bitmask(allowed[len(out[MASKED])], vocab))
        step = engine.generate()
        tokens = np.asarray(step.tokens)
        for slot in prompts:
            if (step.slots is None or slot in step.slots) and len(out[slot]) < STEPS:
                out[slot].append(int(tokens[slot]))
        if masked and step.logprobs is not None and (step.slots is None or MASKED in step.slots):
            lp = step.logprobs.host().row(MASKED, 1)
            assert lp.token == out[MASKED][-1]
            assert lp.top[0][0] not in allowed[len(out[MASKED]) - 1]  # raw: the unmasked favourite
            assert lp.logprob < lp.top[0][1]
    for slot in prompts:
        engine.release(slot)
    return out


# Each case compiles its own step variants (tens of seconds): greedy masking on the chunked path
# (the CPU default), sampled masking on the separate-prefill path (TPU's).
@pytest.mark.parametrize(("chunked", "temperature"), [(True, 0.0), (False, 0.8)])
def test_a_masked_slot_samples_only_allowed_tokens_and_leaves_its_neighbour_alone(
    model: LoadedModel, chunked: bool, temperature: float
) -> None:
    engine = make_engine(model, chunked)
    assert token_masks(engine) is engine
    tok = model.tokenizer
    free_prompt = tok.encode("The capital of France is")
    masked_prompt = tok.encode("Once upon a time, there was")
    sampling = {
        FREE: SamplingParams(seed=3),
        MASKED: SamplingParams(temperature=temperature, seed=5, logprobs=1),
    }
    rng = np.random.default_rng(0)
    # A handful of allowed tokens per position, drawn at random: the model's favourite is never one.
    allowed = [rng.choice(engine.mask_vocab, 6, replace=False) for _ in range(STEPS)]
    unmasked = run(engine, {MASKED: masked_prompt}, sampling, None)[MASKED]
    alone = run(engine, {FREE: free_prompt}, sampling, None)[FREE]
    together = run(engine, {FREE: free_prompt, MASKED: masked_prompt}, sampling, allowed)
    assert all(t in a for t, a in zip(together[MASKED], allowed, strict=True)), (together, allowed)
    assert not any(t in a for t, a in zip(unmasked, allowed, strict=True))  # the masks did the work
    assert together[FREE] == alone  # batch invariance: the masked neighbour changes nothing
    # The slot is unconstrained again once released.
    assert run(engine, {MASKED: masked_prompt}, sampling, None)[MASKED] == unmasked
