"""SmolLM2-135M (embedded GGUF) against transformers: golden greedy tokens and first-step logits.

The golden data was produced by `scripts/make_golden_smollm2.py` with transformers' own GGUF
reader and LlamaForCausalLM in fp32; nothing of ours was involved in producing it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from inference_app.engine import EngineSettings
from inference_app.engine.engine import JaxEngine
from inference_app.model.loader import LoadedModel
from inference_app.model.transformer import prefill
from tests.inference_app.engine_runs import decode_greedy

GOLDEN = Path(__file__).resolve().parents[2] / "golden"


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return dict(json.loads((GOLDEN / "smollm2_golden.json").read_text()))


@pytest.fixture(scope="module")
def engine(smollm2: LoadedModel) -> JaxEngine:
    return JaxEngine(EngineSettings(max_slots=4, max_prefill_length=64, max_target_length=128), smollm2)


def test_golden_covers_raw_and_chat_prompts(golden: dict[str, Any]) -> None:
    kinds = [c["kind"] for c in golden["cases"]]
    assert len(kinds) >= 4 and {"raw", "chat"} <= set(kinds)
    assert all(len(c["greedy_ids"]) >= 64 for c in golden["cases"])


def test_greedy_tokens_match_transformers(engine: JaxEngine, golden: dict[str, Any]) -> None:
    cases = golden["cases"]
    outs = decode_greedy(engine, [c["prompt_ids"] for c in cases], golden["new_tokens"])
    for case, out in zip(cases, outs, strict=True):
        assert out == case["greedy_ids"], case["text"]


def test_prompt_ids_match_reference_tokenizer(engine: JaxEngine, golden: dict[str, Any]) -> None:
    for case in golden["cases"]:
        assert engine.tokenizer.encode(case["text"]) == case["prompt_ids"]


def test_chat_template_matches_reference(engine: JaxEngine, golden: dict[str, Any]) -> None:
    chats = [c["text"] for c in golden["cases"] if c["kind"] == "chat"]
    for text in chats:
        user = text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
        assert engine.tokenizer.apply_chat_template([{"role": "user", "content": user}]) == text


def test_first_step_logits_within_1e3(engine: JaxEngine, golden: dict[str, Any]) -> None:
    """All prompts in one right-padded batch (one compilation; padding after a prompt changes
    none of its positions' logits under causal attention)."""
    ref = np.load(GOLDEN / "smollm2_first_logits.npz")
    prompts = [case["prompt_ids"] for case in golden["cases"]]
    ids = np.zeros((len(prompts), max(map(len, prompts))), np.int32)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = p
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    logits, _ = jax.jit(prefill, static_argnums=1)(engine.prefill_params, engine.config, ids, lengths)
    for i in range(len(prompts)):
        diff = np.abs(np.asarray(logits[i]) - ref[f"case{i}"]).max()
        assert diff < 1e-3, (i, diff)


def test_eos_and_vocab(engine: JaxEngine) -> None:
    assert engine.tokenizer.eos_token_ids == frozenset({2})
    assert engine.tokenizer.vocab_size == engine.config.vocab_size == 49152
    assert engine.config.tie_embeddings and engine.config.num_kv_heads == 3
