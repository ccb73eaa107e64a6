"""What real clients send, in process over the FakeEngine: leniency, choices, tokenizer, JetStream routes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from inference_app.engine.settings import EngineSettings
from inference_app.server.app import create_app
from inference_app.server.options import ServerOptions
from tests.inference_app.fakes import ByteTokenizer, FakeEngine
from tests.inference_app.server.test_routes import expected_text, wait_ready

OPTIONS = ServerOptions(model_name="org/fake-model", model_aliases=("fake",))
GREEDY = {"temperature": 0, "max_tokens": 6}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = EngineSettings(max_slots=4, max_prefill_length=512, max_target_length=600)
    with TestClient(
        create_app(OPTIONS, engine=FakeEngine(settings=settings, prefill_buckets=(64, 512), step_delay=0.001))
    ) as c:
        wait_ready(c)
        yield c


def chat_text(client: TestClient, messages: list[dict[str, object]], **extra: object) -> str:
    r = client.post("/v1/chat/completions", json={"messages": messages, **GREEDY, **extra})
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


def test_text_parts_nulls_and_neutral_fields_are_accepted_as_plain_text(client: TestClient) -> None:
    plain = chat_text(client, [{"role": "user", "content": "hello there"}])
    parts = [{"type": "text", "text": "hello"}, {"type": "text", "text": "there"}]
    assert (
        chat_text(client, [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]) == plain
    )
    assert chat_text(client, [{"role": "user", "content": parts}]) == chat_text(
        client, [{"role": "user", "content": "hello\nthere"}]
    )
    lenient = {
        "top_p": None,
        "n": None,
        "seed": None,
        "stop": None,
        "logprobs": False,
        "top_logprobs": None,
        "store": False,
        "metadata": {"k": "v"},
        "service_tier": "auto",
        "parallel_tool_calls": True,
        "user": "u1",
        "frequency_penalty": 0,
        "presence_penalty": 0.0,
        "logit_bias": {},
        "response_format": {"type": "text"},
        "stream_options": None,
        "model": "fake",
    }
    assert chat_text(client, [{"role": "user", "content": "hello there", "name": "ann"}], **lenient) == plain


def test_developer_is_a_system_message_and_tool_turns_render(client: TestClient) -> None:
    as_system = chat_text(client, [{"role": "system", "content": "brief"}, {"role": "user", "content": "hi"}])
    assert chat_text(
        client, [{"role": "developer", "content": "brief"}, {"role": "user", "content": "hi"}]
    ) == (as_system)
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    assert chat_text(client, history)


def test_model_names_health_and_cards(client: TestClient) -> None:
    assert client.get("/health").status_code == 200
    assert client.get("/v1/models").json()["data"][0]["id"] == "org/fake-model"
    assert client.get("/v1/models/org/fake-model").json()["id"] == "org/fake-model"
    assert client.get("/v1/models/fake").json()["id"] == "org/fake-model"
    assert client.get("/v1/models/other").status_code == 404
    r = client.post("/v1/completions", json={"prompt": "x", "model": "org/fake-model", **GREEDY})
    assert r.json()["model"] == "org/fake-model"


def test_several_prompts_token_ids_n_and_echo(client: TestClient) -> None:
    tok = ByteTokenizer()
    r = client.post("/v1/completions", json={"prompt": ["ab", "cd"], "n": 2, "echo": True, **GREEDY}).json()
    assert [c["index"] for c in r["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in r["choices"]] == ["ab" + expected_text("ab", 6)] * 2 + [
        "cd" + expected_text("cd", 6)
    ] * 2
    assert r["usage"]["prompt_tokens"] == 4 and r["usage"]["completion_tokens"] == 24
    ids = tok.encode("ab")
    by_ids = client.post("/v1/completions", json={"prompt": [ids, tok.encode("cd")], **GREEDY}).json()
    assert [c["text"] for c in by_ids["choices"]] == [expected_text("ab", 6), expected_text("cd", 6)]
    stream = client.post("/v1/completions", json={"prompt": ids, "n": 2, "stream": True, **GREEDY}).text
    chunks = [json.loads(e[6:]) for e in stream.split("\n\n") if e.startswith("data: {")]
    for index in (0, 1):
        assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"][0]["index"] == index) == (
            expected_text("ab", 6)
        )


def test_tokenizer_routes_as_vllm(client: TestClient) -> None:
    tok = client.post("/tokenize", json={"prompt": "hello", "add_special_tokens": False}).json()
    assert tok["tokens"] == ByteTokenizer().encode("hello") and tok["count"] == 5 and tok["max_model_len"] > 0
    assert client.post("/detokenize", json={"tokens": tok["tokens"]}).json() == {"prompt": "hello"}
    chat = client.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["tokens"] == ByteTokenizer().encode(
        ByteTokenizer().apply_chat_template([{"role": "user", "content": "hi"}])
    )
    assert client.get("/tokenizer_info").json()["model_max_length"] > 0


def test_jetstream_http_fields_coercion_and_chunks(client: TestClient) -> None:
    body = {
        "prompt": "hi",
        "max_tokens": "5",
        "server": "127.0.0.1",
        "port": "9000",
        "session_cache": "",
        "priority": "0",
    }
    assert client.post("/generate", json=body).json() == {"response": expected_text("hi", 5)}
    with client.stream("POST", "/generate", json={**body, "stream": "true"}) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert "".join(line["text"] for line in lines) == expected_text("hi", 5)  # what ai-on-gke's client reads


def test_jetstream_v1_routes(client: TestClient) -> None:
    assert client.get("/v1/health").json() == {"is_live": "True"}
    r = client.post("/v1/generate", json={"max_tokens": 5, "text_content": {"text": "  hi  "}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    decoder, pos, texts = json.JSONDecoder(), 0, []
    while pos < len(r.text):  # protobuf JSON messages back to back, as JetStream writes them
        message, pos = decoder.raw_decode(r.text, pos)
        texts += [s["text"] for s in message["streamContent"]["samples"]]
    assert "".join(texts) == expected_text("hi", 5)  # the text is stripped, as JetStream's model does
    by_ids = client.post("/v1/generate", json={"max_tokens": 5, "token_content": {"token_ids": [104, 105]}})
    assert by_ids.status_code == 200


def test_tools_auto_describes_the_tools_and_parses_calls(client: TestClient) -> None:
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    r = client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "1+2?"}], "tools": tools, **GREEDY},
    )
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    forced = client.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "1+2?"}],
            "tools": tools,
            "tool_choice": "required",
            **GREEDY,
        },
    )
    assert forced.status_code == 400 and forced.json()["error"]["param"] == "tool_choice"
