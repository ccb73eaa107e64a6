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
    # the fake engine applies no token masks: a forced call is refused, naming the field
    assert forced.status_code == 400 and forced.json()["error"]["param"] == "tool_choice"
    assert "no token masks" in forced.json()["error"]["message"]
    completion = client.post(
        "/v1/completions", json={"prompt": "ab", "response_format": {"type": "json_object"}, **GREEDY}
    )
    assert completion.status_code == 400 and completion.json()["error"]["param"] == "response_format"
    text = {"type": "text"}
    plain = client.post("/v1/completions", json={"prompt": "ab", "response_format": text, **GREEDY})
    assert plain.json()["choices"][0]["text"] == expected_text("ab", 6)


# ----- log-probabilities (the FakeEngine: every token most likely at -0.25, see fakes.py) ----------


def test_chat_logprobs_whole_and_streamed(client: TestClient) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], **GREEDY, "logprobs": True, "top_logprobs": 2}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == choice["message"]["content"]
    assert len(content) == GREEDY["max_tokens"]
    for t in content:
        assert t["logprob"] == -0.25 and bytes(t["bytes"]).decode() == t["token"]
        assert [a["logprob"] for a in t["top_logprobs"]] == [-0.25, -1.0]
        assert t["top_logprobs"][0]["token"] == t["token"]
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
        chunks = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
    streamed = [t for c in chunks for ch in c["choices"] if ch["logprobs"] for t in ch["logprobs"]["content"]]
    assert streamed == content
    plain = client.post("/v1/chat/completions", json={**body, "logprobs": False, "top_logprobs": 0}).json()
    assert plain["choices"][0]["logprobs"] is None


def test_top_logprobs_without_logprobs_or_above_20_is_a_400(client: TestClient) -> None:
    base = {"messages": [{"role": "user", "content": "hi"}], **GREEDY}
    r = client.post("/v1/chat/completions", json={**base, "top_logprobs": 2})
    assert r.status_code == 400 and "top_logprobs needs logprobs" in r.text
    r = client.post("/v1/chat/completions", json={**base, "logprobs": True, "top_logprobs": 21})
    assert r.status_code == 400 and "top_logprobs" in r.text
    r = client.post("/v1/completions", json={"prompt": "ab", **GREEDY, "logprobs": 21})
    assert r.status_code == 400 and "logprobs" in r.text


def test_completion_logprobs_and_echo_score_the_prompt(client: TestClient) -> None:
    body = {"prompt": "abc", **GREEDY, "logprobs": 1}
    choice = client.post("/v1/completions", json=body).json()["choices"][0]
    lp = choice["logprobs"]
    assert "".join(lp["tokens"]) == choice["text"] and len(lp["tokens"]) == GREEDY["max_tokens"]
    assert lp["token_logprobs"] == [-0.25] * GREEDY["max_tokens"]
    assert all(top == {t: -0.25} for t, top in zip(lp["tokens"], lp["top_logprobs"], strict=True))
    assert lp["text_offset"] == list(range(GREEDY["max_tokens"]))  # one character per byte token
    echoed = client.post("/v1/completions", json={**body, "echo": True}).json()["choices"][0]
    elp = echoed["logprobs"]
    assert echoed["text"] == "abc" + choice["text"]
    assert elp["tokens"] == ["a", "b", "c", *lp["tokens"]]
    assert elp["token_logprobs"] == [None, -0.25, -0.25, *lp["token_logprobs"]]
    assert elp["top_logprobs"][:2] == [None, {"b": -0.25}]
    assert elp["text_offset"][:4] == [0, 1, 2, 3]


def test_echo_with_max_tokens_0_only_scores(client: TestClient) -> None:
    """lm-eval's loglikelihood requests, with token-id prompts, whole and streamed."""
    body = {"prompt": [[97, 98, 99], [100, 101]], "max_tokens": 0, "echo": True, "logprobs": 0}
    r = client.post("/v1/completions", json=body).json()
    assert [c["text"] for c in r["choices"]] == ["abc", "de"]
    assert [c["finish_reason"] for c in r["choices"]] == ["length", "length"]
    assert r["choices"][1]["logprobs"]["token_logprobs"] == [None, -0.25]
    assert r["usage"] == {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5}
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as s:
        chunks = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
    assert [c["choices"][0]["logprobs"]["tokens"] for c in chunks] == [["a", "b", "c"], ["d", "e"]]
    for without in ({"echo": False}, {"logprobs": None}):
        r = client.post("/v1/completions", json={**body, **without})
        assert r.status_code == 400 and "max_tokens" in r.text
