"""The official openai SDK against a real server: sync, async, streaming, its error classes, structured
outputs (`parse` with a pydantic model, json_object) and forced tool calls."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.inference_app.serving_cases import ServerProcess

GREEDY = {"temperature": 0, "max_tokens": 8}


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def test_chat_sync_and_streamed_text_agree(client: openai.OpenAI, model: str) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    whole = client.chat.completions.create(model=model, messages=messages, **GREEDY)  # type: ignore[arg-type]
    text = whole.choices[0].message.content
    assert text and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage is not None and whole.usage.completion_tokens >= 1
    stream = client.chat.completions.create(model=model, messages=messages, stream=True, **GREEDY)  # type: ignore[arg-type]
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == text


def test_completions_sync_and_async(client: openai.OpenAI, model: str, server: ServerProcess) -> None:
    whole = client.completions.create(model=model, prompt="The capital of France is", **GREEDY)  # type: ignore[arg-type]
    assert whole.choices[0].text

    async def twice() -> list[str]:
        aclient = openai.AsyncOpenAI(
            base_url=f"{server.base}/v1", api_key="unused", max_retries=0, timeout=120
        )
        answers = await asyncio.gather(
            *(
                aclient.completions.create(model=model, prompt="The capital of France is", **GREEDY)  # type: ignore[arg-type]
                for _ in range(2)
            )
        )
        await aclient.close()
        return [a.choices[0].text for a in answers]

    assert asyncio.run(twice()) == [whole.choices[0].text] * 2


def test_error_classes(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=model, prompt="x", extra_body={"max_token": 5})
    assert "max_token" in str(bad.value)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)


def test_what_current_sdks_and_agents_send(client: openai.OpenAI, model: str) -> None:
    plain = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        **GREEDY,  # type: ignore[arg-type]
    )
    lenient = client.chat.completions.create(
        model="smollm2-135m",  # the catalog alias
        messages=[
            {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}], "name": "ann"},
        ],
        top_p=None,
        n=None,
        seed=None,
        stop=None,
        logprobs=False,
        top_logprobs=None,
        store=False,
        metadata={"k": "v"},
        service_tier="auto",
        user="u1",
        frequency_penalty=0,
        presence_penalty=0,
        logit_bias={},
        response_format={"type": "text"},
        parallel_tool_calls=True,
        **GREEDY,  # type: ignore[arg-type]
    )
    assert lenient.choices[0].message.content == plain.choices[0].message.content
    assert client.models.retrieve(model).id == model


def test_n_choices_and_the_usage_chunk(client: openai.OpenAI, model: str) -> None:
    two = client.completions.create(
        model=model, prompt="Once upon a time", n=2, temperature=1.0, seed=7, max_tokens=6
    )
    assert [c.index for c in two.choices] == [0, 1] and two.usage is not None
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,  # type: ignore[arg-type]
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])


def test_unsupported_features_are_bad_requests_naming_the_field(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x"}], frequency_penalty=0.5, max_tokens=1
        )
    assert "frequency_penalty: not supported" in str(bad.value)


def test_logprobs_chat_and_completions_whole_and_streamed(client: openai.OpenAI, model: str) -> None:
    messages = [{"role": "user", "content": "Name a colour."}]
    whole = client.chat.completions.create(
        model=model,
        messages=messages,
        logprobs=True,
        top_logprobs=3,
        **GREEDY,  # type: ignore[arg-type]
    )
    choice = whole.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    content = choice.logprobs.content
    assert "".join(t.token for t in content).startswith(choice.message.content or "")
    for t in content:
        assert len(t.top_logprobs) == 3 and t.logprob <= 0
        assert t.top_logprobs[0].token == t.token  # greedy: the chosen token is the most likely
        assert t.top_logprobs[0].logprob == t.logprob
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        logprobs=True,
        top_logprobs=3,
        stream=True,
        **GREEDY,  # type: ignore[arg-type]
    )
    streamed = [t for c in stream for ch in c.choices if ch.logprobs for t in ch.logprobs.content or []]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]
    completion = client.completions.create(
        model=model,
        prompt="The capital of France is",
        logprobs=2,
        echo=True,
        **GREEDY,  # type: ignore[arg-type]
    )
    lp = completion.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert lp.token_logprobs[0] is None and all(v is not None for v in lp.token_logprobs[1:])
    assert completion.choices[0].text.startswith("The capital of France is")


class Place(BaseModel):
    city: str = Field(max_length=20)
    country: str = Field(max_length=20)


ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}


def test_structured_outputs_json_object_and_json_schema(client: openai.OpenAI, model: str) -> None:
    ask = 'Reply with a JSON object with a single key "ok" set to true.'
    free = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": ask}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=32,
    )
    assert free.choices[0].finish_reason == "stop"  # the object closed: the answer ends there
    assert isinstance(json.loads(free.choices[0].message.content or ""), dict)
    parsed = client.chat.completions.parse(  # the SDK sends a strict json_schema built from Place
        model=model,
        messages=[{"role": "user", "content": "Name a city and its country."}],
        response_format=Place,
        temperature=0,
        max_tokens=40,
    )
    choice = parsed.choices[0]
    assert choice.finish_reason == "stop" and isinstance(choice.message.parsed, Place)
    jsonschema.validate(json.loads(choice.message.content or ""), Place.model_json_schema())
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "x"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "p", "strict": True, "schema": {"type": "string", "pattern": "(("}},
            },
            max_tokens=4,
        )
    assert bad.value.body["param"] == "response_format.json_schema.schema"  # type: ignore[index]
    # /v1/completions takes it too (vLLM's extension, sent as an extra field): every prompt's choice
    both = client.completions.create(
        model=model,
        prompt=["A JSON object describing a city:", "Some JSON:"],
        max_tokens=40,
        temperature=0,
        extra_body={
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "Place", "strict": True, "schema": Place.model_json_schema()},
            }
        },
    )
    assert [c.finish_reason for c in both.choices] == ["stop", "stop"]
    for c in both.choices:
        jsonschema.validate(json.loads(c.text), Place.model_json_schema())


def test_forced_tool_calls(client: openai.OpenAI, model: str) -> None:
    """tool_choice "required" here; a named function through langchain's bind_tools."""
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is 1 + 2?"}],
        tools=[ADD_TOOL],  # type: ignore[list-item]
        tool_choice="required",
        temperature=0,
        max_tokens=40,
    )
    calls = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls" and calls and len(calls) == 1
    assert calls[0].type == "function" and calls[0].function.name == "add"
    jsonschema.validate(json.loads(calls[0].function.arguments), ADD_TOOL["function"]["parameters"])  # type: ignore[index]
