"""langchain-openai's ChatOpenAI (with_structured_output, bind_tools) and litellm (`openai/` and
`hosted_vllm/` providers), unmodified.

The clients are imported where they are used, not at the top: every pytest-xdist worker imports
every test module to collect it, and litellm alone took 8 s of CPU to import (langchain-openai 2 s);
only the worker that runs this file needs them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jsonschema
from pydantic import BaseModel, Field

from tests.inference_app.serving_cases import ServerProcess

if TYPE_CHECKING:
    from langchain_openai import ChatOpenAI


def chat_model(server: ServerProcess, max_tokens: int = 8) -> ChatOpenAI:
    from langchain_openai import ChatOpenAI

    model = litellm_model(server)
    return ChatOpenAI(
        base_url=f"{server.base}/v1", api_key="unused", model=model, temperature=0, max_tokens=max_tokens
    )


def litellm_model(server: ServerProcess) -> str:
    import httpx

    return str(httpx.get(f"{server.base}/v1/models", timeout=30).json()["data"][0]["id"])


def test_langchain_invoke_stream_and_list_content(server: ServerProcess) -> None:
    from langchain_core.messages import HumanMessage

    llm = chat_model(server)
    text = llm.invoke("What is the capital of France?").content
    assert isinstance(text, str) and text
    assert "".join(str(c.content) for c in llm.stream("What is the capital of France?")) == text
    parts = HumanMessage(content=[{"type": "text", "text": "What is the capital of France?"}])
    assert llm.invoke([parts]).content == text


def test_langchain_bind_tools_round_trips(server: ServerProcess) -> None:
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    reply = chat_model(server).bind_tools([add]).invoke("What is 1 + 2? Use the add tool.")
    assert reply.content or reply.tool_calls  # a tool call when the model makes one, else text
    for call in reply.tool_calls:
        assert call["name"] == "add" and isinstance(call["args"], dict)


class Place(BaseModel):
    """A city and the country it is in."""

    city: str = Field(max_length=20)
    country: str = Field(max_length=20)


def test_langchain_with_structured_output_and_forced_tool_choice(server: ServerProcess) -> None:
    llm = chat_model(server, max_tokens=40)
    place = llm.with_structured_output(Place).invoke("Name a city and its country.")  # json_schema
    assert isinstance(place, Place)

    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    reply = llm.bind_tools([add], tool_choice="add").invoke("What is 1 + 2?")
    assert [c["name"] for c in reply.tool_calls] == ["add"]
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}
    jsonschema.validate(reply.tool_calls[0]["args"], {**schema, "required": ["a", "b"]})


def test_litellm_openai_and_hosted_vllm_providers(server: ServerProcess) -> None:
    import litellm

    model = litellm_model(server)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    answers = []
    for provider in ("openai", "hosted_vllm"):
        r = litellm.completion(
            model=f"{provider}/{model}",
            api_base=f"{server.base}/v1",
            api_key="unused",
            messages=messages,
            temperature=0,
            max_tokens=8,
        )
        answers.append(r.choices[0].message.content)
    streamed = litellm.completion(
        model=f"hosted_vllm/{model}",
        api_base=f"{server.base}/v1",
        api_key="unused",
        messages=messages,
        temperature=0,
        max_tokens=8,
        stream=True,
    )
    answers.append("".join(c.choices[0].delta.content or "" for c in streamed))
    assert answers[0] and answers == [answers[0]] * 3
