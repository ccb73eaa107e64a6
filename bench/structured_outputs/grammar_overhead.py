"""Per-token cost of three grammar libraries with the SmolLM2 tokenizer (V = 49152): which one to use.

Walks a fixed, valid answer to a 6-field JSON schema (and the same text as free JSON, `json_object`)
token by token; each step fills the allowed-token bitmask (int32 [ceil(V/32)]) and advances by the
token, as the orchestrator does around every decode step. Prints the per-schema compile time and the
median / p90 / max per-token time. A library that is not installed is skipped (the project ships
llguidance only; `pip install xgrammar outlines-core` to compare).

    .venv/bin/python bench/structured_outputs/grammar_overhead.py [llguidance] [xgrammar] [outlines]

Results: results.md beside this file.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from inference_app.model.catalog import embedded_model_path
from inference_app.model.weights_gguf import GGUFCheckpoint, gguf_tokenizer

TOKENIZER = gguf_tokenizer(GGUFCheckpoint(str(embedded_model_path("smollm2-135m"))))
TOKDIR = tempfile.mkdtemp()
TOKENIZER.backend.save(os.path.join(TOKDIR, "tokenizer.json"))
V = TOKENIZER.vocab_size
EOS = 2
WORDS = (V + 31) // 32
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "role": {"enum": ["admin", "user", "guest"]},
    },
    "required": ["name", "age", "email", "tags", "address", "role"],
    "additionalProperties": False,
}
ANSWER = json.dumps(
    {
        "name": "Ada Lovelace",
        "age": 36,
        "email": "ada@example.com",
        "tags": ["math", "poetry", "engines"],
        "address": {"city": "London", "zip": "W1"},
        "role": "admin",
    }
)
IDS = [*TOKENIZER.encode(ANSWER), EOS]

Step = Callable[[int], None]  # fill the mask, then advance by the token


def walk(step: Step) -> list[float]:
    times = []
    for token in IDS:
        t0 = time.perf_counter()
        step(token)
        times.append(time.perf_counter() - t0)
    return times


def llguidance_case(schema: dict[str, Any] | None) -> tuple[float, Step]:
    import llguidance
    import llguidance.numpy as lln

    lltok = llguidance.LLTokenizer(TOKENIZER.backend.to_str(), n_vocab=V, eos_token=EOS)
    t0 = time.perf_counter()
    m = llguidance.LLMatcher(
        lltok, llguidance.LLMatcher.grammar_from_json_schema(schema or {"type": "object"})
    )
    compile_s = time.perf_counter() - t0
    mask = lln.allocate_token_bitmask(1, V)

    def step(token: int) -> None:
        lln.fill_next_token_bitmask(m, mask, 0)
        if not (token == EOS and m.is_stopped()):
            assert m.consume_token(token), m.get_error()

    return compile_s, step


def xgrammar_case(schema: dict[str, Any] | None) -> tuple[float, Step]:
    import xgrammar as xgr
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=f"{TOKDIR}/tokenizer.json", eos_token="<|im_end|>")
    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(hf, vocab_size=V), max_threads=1)
    t0 = time.perf_counter()
    grammar = (
        compiler.compile_json_schema(json.dumps(schema))
        if schema
        else compiler.compile_builtin_json_grammar()
    )
    compile_s = time.perf_counter() - t0
    m = xgr.GrammarMatcher(grammar)
    mask = xgr.allocate_token_bitmask(1, V)

    def step(token: int) -> None:
        m.fill_next_token_bitmask(mask, 0)
        assert m.accept_token(token)

    return compile_s, step


def outlines_case(schema: dict[str, Any] | None) -> tuple[float, Step]:
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    if schema is None:
        raise NotImplementedError("outlines-core has no free-JSON grammar")
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    special = {t.content for t in TOKENIZER.backend.get_added_tokens_decoder().values()}
    vocab: dict[bytes, list[int]] = {}
    for text, i in TOKENIZER.backend.get_vocab().items():
        if i != EOS:
            key = text.encode() if text in special else bytes(byte_of[c] for c in text)
            vocab.setdefault(key, []).append(i)
    t0 = time.perf_counter()
    guide = Guide(Index(build_regex_from_schema(json.dumps(schema)), Vocabulary(EOS, vocab)))
    compile_s = time.perf_counter() - t0
    mask = np.zeros(WORDS, np.int32)

    def step(token: int) -> None:
        guide.write_mask_into(mask.ctypes.data, mask.size, mask.itemsize)
        if token != EOS:
            guide.advance(token)

    return compile_s, step


CASES = {"llguidance": llguidance_case, "xgrammar": xgrammar_case, "outlines": outlines_case}


def main() -> None:
    for lib in sys.argv[1:] or list(CASES):
        for label, schema in (("json_schema", SCHEMA), ("json_object", None)):
            try:
                compile_s, step = CASES[lib](schema)
            except (ImportError, NotImplementedError) as exc:
                print(f"{lib:10s} {label:11s} skipped: {exc}")
                continue
            us = sorted(t * 1e6 for t in walk(step))
            print(
                f"{lib:10s} {label:11s} compile {compile_s * 1e3:8.1f} ms  per token: median "
                f"{statistics.median(us):7.1f} us  p90 {us[int(0.9 * len(us))]:8.1f} us  "
                f"max {us[-1]:8.1f} us "
                f"({len(us)} tokens)"
            )


if __name__ == "__main__":
    main()
