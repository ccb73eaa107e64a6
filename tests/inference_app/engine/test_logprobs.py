"""Log-probabilities from the engine against transformers' own logits (a random tiny Llama).

Sampled tokens' log-probabilities (prefill path, chunked path, decode steps) and a prompt's own
tokens' (`score_prompt`) are log_softmax of transformers' LlamaForCausalLM logits at the same
positions, within 1e-3; asking for them changes no token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference_app.engine import EngineSettings, SamplingParams
from inference_app.engine.api import MAX_TOP_LOGPROBS, TokenLogprobs, prompt_scoring
from inference_app.engine.engine import JaxEngine, load_engine

PROMPT = [17, 250, 3, 9000, 41, 41, 7, 1234, 5, 48000, 77, 2, 600, 12, 13, 14, 15, 16, 30]
STEPS = 6


@pytest.fixture(scope="module")
def tiny_dir(tiny_llama_dir: Path) -> Path:
    return tiny_llama_dir


@pytest.fixture(scope="module")
def engine(tiny_dir: Path) -> JaxEngine:
    return load_engine(
        EngineSettings(
            model=None, model_path=str(tiny_dir), max_slots=2, max_prefill_length=32, max_target_length=64
        )
    )


@pytest.fixture(scope="module")
def reference_logprobs(tiny_dir: Path, torch: Any) -> Any:
    """log_softmax of transformers' logits at every position of `ids` (float64, [len(ids), V])."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()

    def run(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            logits = model(torch.tensor([ids], dtype=torch.long)).logits[0].double()
        return torch.log_softmax(logits, dim=-1).numpy()

    return run


def check(lp: TokenLogprobs, ref_row: np.ndarray, top: int) -> None:
    assert abs(lp.logprob - ref_row[lp.token]) < 1e-3
    assert len(lp.top) == top
    ref_top = np.sort(ref_row)[::-1][:top]
    np.testing.assert_allclose([p for _, p in lp.top], ref_top, atol=1e-3)
    for token, p in lp.top:
        assert abs(ref_row[token] - p) < 1e-3


def decode(
    engine: JaxEngine, sp: SamplingParams, chunked: bool
) -> tuple[list[int], list[TokenLogprobs | None]]:
    """STEPS tokens of PROMPT in slot 1 (prefill + insert, or chunked prefill inside the steps)."""
    tokens: list[int] = []
    lps: list[TokenLogprobs | None] = []
    if chunked:
        engine.add_prompt(1, PROMPT, sp)
    else:
        prefix = engine.prefill(PROMPT, sp)
        engine.insert(engine.transfer(prefix), 1)
        tokens.append(prefix.first_token)
        lps.append(prefix.logprobs)
    while len(tokens) < STEPS:
        out = engine.generate()
        if out.slots is not None and 1 not in out.slots:
            continue
        tokens.append(int(np.asarray(out.tokens)[1]))
        lps.append(None if out.logprobs is None else out.logprobs.host().row(1, sp.logprobs or 0))
    engine.release(1)
    return tokens, lps


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_sampled_tokens_logprobs_match_transformers(
    engine: JaxEngine, reference_logprobs: Any, chunked: bool, temperature: float
) -> None:
    if chunked and not engine.chunked_prefill:
        pytest.skip("this platform prefills separately")
    plain, none = decode(engine, SamplingParams(temperature=temperature, seed=7), chunked)
    assert none == [None] * STEPS  # not asked: not computed
    tokens, lps = decode(engine, SamplingParams(temperature=temperature, seed=7, logprobs=3), chunked)
    assert tokens == plain  # asking for log-probabilities changes no token
    ref = reference_logprobs(PROMPT + tokens)
    for i, lp in enumerate(lps):
        assert lp is not None and lp.token == tokens[i]
        # raw distribution: at temperature 0.9 the numbers are still those of the unscaled logits
        check(lp, ref[len(PROMPT) - 1 + i], 3)
    if temperature == 0.0:
        assert all(lp is not None and lp.top[0][0] == lp.token for lp in lps)


def test_a_step_computes_logprobs_only_while_a_slot_asks(engine: JaxEngine) -> None:
    engine.insert(engine.prefill(PROMPT[:5], SamplingParams()), 0)
    engine.insert(engine.prefill(PROMPT, SamplingParams(logprobs=0)), 1)
    out = engine.generate()
    assert out.logprobs is not None
    row = out.logprobs.host().row(1, 0)
    assert row.token == int(np.asarray(out.tokens)[1]) and row.top == () and row.logprob < 0
    engine.release(1)
    assert engine.generate().logprobs is None  # the one slot left did not ask
    engine.release(0)


def test_score_prompt_matches_transformers(engine: JaxEngine, reference_logprobs: Any) -> None:
    assert prompt_scoring(engine) is engine
    rows = engine.score_prompt(PROMPT, MAX_TOP_LOGPROBS)
    ref = reference_logprobs(PROMPT)
    assert [r.token for r in rows] == PROMPT[1:]
    for p, row in enumerate(rows):
        check(row, ref[p], MAX_TOP_LOGPROBS)
    assert engine.score_prompt(PROMPT[:1], 1) == []  # the first token has no context to score


def test_bad_logprobs_counts_are_refused(engine: JaxEngine) -> None:
    with pytest.raises(ValueError, match="logprobs must be in"):
        engine.prefill(PROMPT, SamplingParams(logprobs=MAX_TOP_LOGPROBS + 1))
    with pytest.raises(ValueError, match="top must be in"):
        engine.score_prompt(PROMPT, -1)
