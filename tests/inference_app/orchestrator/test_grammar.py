"""Structured-output grammars with the real SmolLM2 tokenizer, and their masks applied as the engine does."""

from __future__ import annotations

import json

import jax.numpy as jnp
import jsonschema
import numpy as np
import pytest

from inference_app.engine.token_mask import apply_bitmask
from inference_app.model.catalog import embedded_model_path
from inference_app.model.tokenizer import TextTokenizer
from inference_app.model.weights_gguf import gguf_tokenizer, open_gguf
from inference_app.orchestrator.grammar import GrammarCompiler, GrammarError, GrammarSpec

EOS = 2
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
        "ok": {"type": "boolean"},
        "role": {"enum": ["admin", "user", "guest"]},
    },
    "required": ["name", "age", "ok", "role"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return gguf_tokenizer(open_gguf(str(embedded_model_path("smollm2-135m"))))


@pytest.fixture(scope="module")
def compiler(tokenizer: TextTokenizer) -> GrammarCompiler:
    return GrammarCompiler(tokenizer.backend.to_str(), EOS, tokenizer.vocab_size)


def allowed(row: np.ndarray, vocab: int) -> np.ndarray:
    bits = np.unpackbits(row.view(np.uint8), bitorder="little")[:vocab]
    return np.nonzero(bits)[0]


def test_a_valid_answer_is_accepted_token_by_token_and_every_mask_allows_it(
    tokenizer: TextTokenizer, compiler: GrammarCompiler
) -> None:
    m = compiler.matcher(GrammarSpec.json_schema(SCHEMA, strict=True))
    row = compiler.allocate(1)[0]
    for token in tokenizer.encode(json.dumps({"name": "Ada", "age": 36, "ok": True, "role": "admin"})):
        m.fill_bitmask(row)
        assert token in allowed(row, tokenizer.vocab_size)
        assert m.accept(token)
    assert m.done
    m.fill_bitmask(row)
    assert list(allowed(row, tokenizer.vocab_size)) == [EOS]


def test_the_first_mask_allows_only_tokens_that_can_open_the_object(
    tokenizer: TextTokenizer, compiler: GrammarCompiler
) -> None:
    m = compiler.matcher(GrammarSpec.json_object())
    row = compiler.allocate(1)[0]
    m.fill_bitmask(row)
    texts = [tokenizer.decode([int(t)]) for t in allowed(row, tokenizer.vocab_size)]
    assert texts and all(t.startswith("{") for t in texts)
    assert not m.accept(tokenizer.encode("Sure")[0])  # refused, and the matcher stays put
    assert m.accept(tokenizer.encode("{")[0])


def test_masked_sampling_from_random_logits_always_yields_schema_valid_json(
    tokenizer: TextTokenizer, compiler: GrammarCompiler
) -> None:
    rng = np.random.default_rng(0)
    for _ in range(3):
        m = compiler.matcher(GrammarSpec.json_schema(SCHEMA, strict=True))
        mask = compiler.allocate(1)
        out: list[int] = []
        for _ in range(200):
            m.fill_bitmask(mask[0])
            logits = jnp.asarray(rng.normal(size=(1, tokenizer.vocab_size)).astype(np.float32))
            token = int(jnp.argmax(apply_bitmask(logits, jnp.asarray(mask))[0]))
            if token == EOS:
                break
            assert m.accept(token)
            out.append(token)
        assert m.done
        jsonschema.validate(json.loads(tokenizer.decode(out)), SCHEMA)


def test_apply_bitmask_matches_an_unpacked_mask() -> None:
    rng = np.random.default_rng(1)
    vocab = 100  # not a multiple of 32: the last word is partly padding
    mask = rng.integers(-(2**31), 2**31, size=(3, 4), dtype=np.int64).astype(np.int32)
    mask[2] = -1  # an unconstrained row
    logits = rng.normal(size=(3, vocab)).astype(np.float32)
    got = np.asarray(apply_bitmask(jnp.asarray(logits), jnp.asarray(mask)))
    keep = np.unpackbits(mask.view(np.uint8), axis=1, bitorder="little")[:, :vocab].astype(bool)
    np.testing.assert_array_equal(got, np.where(keep, logits, -np.inf))
    np.testing.assert_array_equal(got[2], logits[2])


def test_strict_schemas_name_what_cannot_be_enforced_and_lenient_ones_ignore_it() -> None:
    schema = {"type": "string", "format": "not-a-format"}
    with pytest.raises(GrammarError, match="not-a-format"):
        GrammarSpec.json_schema(schema, strict=True).check()
    GrammarSpec.json_schema(schema, strict=False).check()
    with pytest.raises(GrammarError):
        GrammarSpec.json_schema({"type": "no-such-type"}, strict=False).check()
