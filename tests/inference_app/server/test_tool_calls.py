"""Tool-call grammar and parsing with the real SmolLM2 tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from inference_app.model.catalog import embedded_model_path
from inference_app.model.tokenizer import TextTokenizer
from inference_app.model.weights_gguf import gguf_tokenizer, open_gguf
from inference_app.orchestrator.grammar import GrammarCompiler
from inference_app.server.tool_calls import (
    Function,
    call_as_text,
    call_grammar,
    parse_tool_calls,
    tools_system_prompt,
)

ADD = Function(
    "add",
    "Add two integers.",
    {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
)
WEATHER = Function(
    "weather",
    "Weather in a city.",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
)


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return gguf_tokenizer(open_gguf(str(embedded_model_path("smollm2-135m"))))


@pytest.fixture(scope="module")
def compiler(tokenizer: TextTokenizer) -> GrammarCompiler:
    return GrammarCompiler(tokenizer.backend.to_str(), 2, tokenizer.vocab_size)


def accepts(compiler: GrammarCompiler, tokenizer: TextTokenizer, text: str) -> bool:
    m = compiler.matcher(call_grammar([ADD, WEATHER]))
    return all(m.accept(t) for t in tokenizer.encode(text)) and m.done


def test_the_forced_call_grammar_takes_a_valid_call_of_each_function(
    compiler: GrammarCompiler, tokenizer: TextTokenizer
) -> None:
    assert accepts(
        compiler, tokenizer, '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
    )
    assert accepts(
        compiler, tokenizer, '<tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call>'
    )


@pytest.mark.parametrize(
    "text",
    [
        # a string where an int belongs
        '<tool_call>{"name": "add", "arguments": {"a": "1", "b": 2}}</tool_call>',
        '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>',  # a required argument missing
        '<tool_call>{"name": "sub", "arguments": {"a": 1, "b": 2}}</tool_call>',  # an unknown function
        'Sure! <tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>',  # text around the call
    ],
)
def test_the_forced_call_grammar_refuses_anything_else(
    compiler: GrammarCompiler, tokenizer: TextTokenizer, text: str
) -> None:
    assert not accepts(compiler, tokenizer, text)


def test_a_masked_walk_from_random_logits_ends_in_a_parseable_call(
    compiler: GrammarCompiler, tokenizer: TextTokenizer
) -> None:
    rng = np.random.default_rng(0)
    m = compiler.matcher(call_grammar([ADD]))
    row = compiler.allocate(1)[0]
    out: list[int] = []
    while not m.done and len(out) < 300:
        m.fill_bitmask(row)
        bits = np.unpackbits(row.view(np.uint8), bitorder="little")[: tokenizer.vocab_size].astype(bool)
        scores = np.where(bits, rng.normal(size=tokenizer.vocab_size), -np.inf)
        token = int(np.argmax(scores))
        assert m.accept(token)
        out.append(token)
    content, calls = parse_tool_calls(tokenizer.decode(out), [ADD])
    assert content is None and len(calls) == 1 and calls[0].name == "add"
    assert set(json.loads(calls[0].arguments)) == {"a", "b"}


def test_parsing_keeps_text_and_skips_blocks_that_are_not_calls() -> None:
    call = '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
    text = f"Let me add.\n{call}\n<tool_call>oops</tool_call>"
    content, calls = parse_tool_calls(text, [ADD])
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("add", {"a": 1, "b": 2})]
    assert content == "Let me add.\n\n<tool_call>oops</tool_call>"
    assert parse_tool_calls("no calls here", [ADD]) == ("no calls here", [])
    assert parse_tool_calls('<tool_call>{"name": "rm", "arguments": {}}</tool_call>', [ADD])[1] == []


def test_an_earlier_call_is_written_back_as_the_model_writes_it() -> None:
    text = call_as_text("add", '{"a": 1, "b": 2}')
    assert parse_tool_calls(text, [ADD])[1][0].arguments == '{"a": 1, "b": 2}'
    assert "add" in tools_system_prompt([ADD]) and "<tool_call>" in tools_system_prompt([ADD])
