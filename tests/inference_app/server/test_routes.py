"""HTTP routes in-process (Starlette TestClient + lifespan) over the FakeEngine: shapes and errors."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from inference_app.server.app import create_app
from inference_app.server.options import ServerOptions
from inference_app.testing.faults import FaultInjectingEngine
from tests.inference_app.fakes import EOS, ByteTokenizer, FakeEngine, expected_ids
from tests.inference_app.serving_cases import bad_inputs, check_error

OPTIONS = ServerOptions(model_name="fake")


def wait_ready(client: TestClient, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/healthcheck").status_code != 200:
        assert time.monotonic() < deadline, "not ready"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def engine() -> FakeEngine:
    return FakeEngine(step_delay=0.001)


@pytest.fixture(scope="module")
def client(engine: FakeEngine) -> Iterator[TestClient]:
    with TestClient(create_app(OPTIONS, engine=engine)) as c:
        wait_ready(c)
        yield c


def expected_text(prompt: str, max_tokens: int) -> str:
    ids = expected_ids(tuple(prompt.encode()), max_tokens)
    return ByteTokenizer().decode(ids[: ids.index(EOS)] if EOS in ids else ids)


def test_generate_returns_the_continuation_only(client: TestClient) -> None:
    r = client.post(
        "/generate", json={"prompt": "What are the top 5 programming languages", "max_tokens": 20}
    )
    assert r.status_code == 200 and r.headers["x-request-id"]
    assert r.json() == {"response": expected_text("What are the top 5 programming languages", 20)}


def test_client_request_id_is_echoed(client: TestClient) -> None:
    r = client.post("/generate", json={"prompt": "hi", "max_tokens": 2}, headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = client.post(
        "/generate", json={"prompt": "hi", "max_tokens": 2}, headers={"X-Request-Id": "bad id\x01"}
    )
    assert r.headers["x-request-id"] != "bad id\x01" and len(r.headers["x-request-id"]) == 16


def test_generate_stream_is_ndjson_with_same_text(client: TestClient) -> None:
    prompt = "stream me"
    with client.stream("POST", "/generate", json={"prompt": prompt, "max_tokens": 40, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    *chunks, last = lines
    # jetstream-http's chunk (id, time_created, text) plus `response`, the same text
    assert len(chunks) > 1 and all(set(c) == {"id", "time_created", "text", "response"} for c in chunks)
    assert all(c["text"] == c["response"] and c["id"] == chunks[0]["id"] for c in chunks)
    assert last["finish_reason"] in ("stop", "length") and last["response"] == last["text"] == ""
    assert last["usage"]["completion_tokens"] >= 1
    assert "".join(c["response"] for c in chunks) == expected_text(prompt, 40)
    assert (
        "".join(c["response"] for c in chunks)
        == client.post("/generate", json={"prompt": prompt, "max_tokens": 40}).json()["response"]
    )


def _sse_events(body: str) -> list[str]:
    assert body.endswith("data: [DONE]\n\n")
    events = body.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    return [e[len("data: ") :] for e in events]


def test_completions_and_sse_framing(client: TestClient) -> None:
    body = {"prompt": "openai please", "max_tokens": 12, "temperature": 0}
    whole = client.post("/v1/completions", json=body).json()
    assert whole["object"] == "text_completion" and whole["model"] == "fake"
    assert whole["choices"][0]["text"] == expected_text("openai please", 12)
    assert whole["usage"] == {"prompt_tokens": 13, "completion_tokens": 12, "total_tokens": 25}
    r = client.post("/v1/completions", json={**body, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    payloads = _sse_events(r.text)
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["id"] == chunks[0]["id"] for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and all("usage" not in c for c in chunks)
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    # usage only when asked for: a last chunk of its own, with no choices (as OpenAI sends it)
    with_usage = {**body, "stream": True, "stream_options": {"include_usage": True}}
    asked = client.post("/v1/completions", json=with_usage)
    *_, usage_chunk = [json.loads(p) for p in _sse_events(asked.text)[:-1]]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == whole["usage"]


def test_chat_completions_use_the_chat_template(client: TestClient) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    r = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 9, "temperature": 0})
    out = r.json()
    rendered = ByteTokenizer().apply_chat_template(messages)
    assert out["object"] == "chat.completion" and out["choices"][0]["message"]["role"] == "assistant"
    assert out["choices"][0]["message"]["content"] == expected_text(rendered, 9)
    assert out["usage"]["prompt_tokens"] == len(rendered.encode())
    s = client.post(
        "/v1/chat/completions", json={"messages": messages, "max_tokens": 9, "temperature": 0, "stream": True}
    )
    chunks = [json.loads(p) for p in _sse_events(s.text)[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == out["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and all("usage" not in c for c in chunks)
    asked = client.post(
        "/v1/chat/completions",
        json={
            "messages": messages,
            "max_tokens": 9,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    *_, usage_chunk = [json.loads(p) for p in _sse_events(asked.text)[:-1]]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == out["usage"]
    assert usage_chunk["object"] == "chat.completion.chunk"


def test_models_root_and_openapi(client: TestClient) -> None:
    models = client.get("/v1/models").json()
    assert models["data"][0]["id"] == "fake" and models["data"][0]["max_model_len"] == 160
    root = client.get("/").json()
    assert root["model"] == "fake" and root["mode"] == "interleaved" and root["phase"] == "ready"
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/GenerateRequest"}
    assert "prompt" in spec["components"]["schemas"]["GenerateRequest"]["required"]
    assert "ChatMessage" in spec["components"]["schemas"]


@pytest.mark.parametrize("case", bad_inputs(max_prefill=64, max_target=160), ids=lambda c: c.name)
def test_bad_input_gets_the_documented_4xx(client: TestClient, case: object) -> None:
    from tests.inference_app.serving_cases import BadInput

    assert isinstance(case, BadInput)
    r = client.request(
        case.method, case.path, content=case.body, headers={"content-type": "application/json"}
    )
    check_error(case, r)


def test_still_serving_after_bad_inputs_and_metrics_count_them(client: TestClient) -> None:
    r = client.post("/generate", json={"prompt": "after the storm", "max_tokens": 5})
    assert r.status_code == 200 and r.json()["response"] == expected_text("after the storm", 5)
    metrics = client.get("/metrics").text
    bad = next(
        line
        for line in metrics.splitlines()
        if line.startswith('inference_requests_total{outcome="bad_request"}')
    )
    assert float(bad.split()[-1]) >= 20
    for name in (
        "inference_queue_depth",
        "inference_active_slots",
        "inference_requests_in_flight",
        'inference_requests_total{outcome="ok"}',
        "inference_time_to_first_token_seconds_bucket",
        "inference_time_per_output_token_seconds_bucket",
        "inference_generated_tokens_total",
        "inference_prompt_tokens_total",
        "inference_prefill_step_seconds_count",
        "inference_decode_step_seconds_count",
    ):
        assert name in metrics, name


def test_health_is_503_until_warmed_up() -> None:
    engine = FakeEngine(warmup_delay=0.4)
    with TestClient(create_app(OPTIONS, engine=engine)) as c:
        first = c.get("/healthcheck")
        assert first.status_code == 503 and first.json()["response"]["is_live"] is False
        assert first.json()["response"]["phase"] in ("loading", "warming_up") and first.headers["retry-after"]
        g = c.post("/generate", json={"prompt": "too early", "max_tokens": 3})
        assert g.status_code == 503 and g.headers["retry-after"]
        wait_ready(c)
        assert engine.warmed_up
        assert c.get("/healthcheck").json() == {"response": {"is_live": True}}


def test_fault_in_one_request_is_a_500_and_serving_continues() -> None:
    engine = FaultInjectingEngine(FakeEngine(), "prefill", "BOOM")
    with TestClient(create_app(OPTIONS, engine=engine)) as c:
        wait_ready(c)
        r = c.post("/generate", json={"prompt": "please BOOM", "max_tokens": 5})
        assert r.status_code == 500 and "injected fault in prefill" in r.json()["error"]["message"]
        s = c.post("/generate", json={"prompt": "stream BOOM", "max_tokens": 5, "stream": True})
        assert s.status_code == 500 and "injected fault" in s.json()["error"]["message"]
        assert c.post("/generate", json={"prompt": "fine", "max_tokens": 5}).status_code == 200
        assert c.get("/healthcheck").status_code == 200
        assert 'inference_requests_total{outcome="error"} 2.0' in c.get("/metrics").text


def test_device_loop_failure_turns_health_red() -> None:
    engine = FaultInjectingEngine(FakeEngine(), "generate", "CRASH")
    with TestClient(create_app(OPTIONS, engine=engine)) as c:
        wait_ready(c)
        r = c.post("/generate", json={"prompt": "CRASH", "max_tokens": 5})
        assert r.status_code == 500 and "device loop failed" in r.json()["error"]["message"]
        h = c.get("/healthcheck")
        assert h.status_code == 503 and h.json()["response"]["phase"] == "failed"
        assert "generate stage crashed" in h.json()["response"]["error"]
        after = c.post("/generate", json={"prompt": "anyone there?", "max_tokens": 5})
        assert after.status_code == 503 and "device loop failed" in after.json()["error"]["message"]


def test_create_app_needs_exactly_one_engine_source() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        create_app(OPTIONS)
    with pytest.raises(ValueError, match="exactly one"):
        create_app(OPTIONS, engine=FakeEngine(), engine_factory=FakeEngine)


@pytest.mark.parametrize("path", ["/generate", "/v1/completions", "/v1/chat/completions"])
def test_a_failure_mid_stream_ends_with_the_one_error_body(path: str) -> None:
    """After the headers went out, the error is the stream's last chunk, in the same shape (and with the
    same `type` for its status) as an error answer."""
    app = create_app(OPTIONS, engine=FakeEngine(step_delay=0.02))
    body = {"max_tokens": 100, "ignore_eos": True, "stream": True}
    body |= {"messages": [{"role": "user", "content": "x"}]} if "chat" in path else {"prompt": "x"}
    with TestClient(app) as c:
        wait_ready(c)
        with c.stream("POST", path, json=body) as r:
            lines = (line.removeprefix("data: ") for line in r.iter_lines() if line)
            next(lines)
            app.state.serving.abort_in_flight("The server is shutting down.")
            rest = [line for line in lines if line != "[DONE]"]
            request_id = r.headers["x-request-id"]
    assert json.loads(rest[-1]) == {
        "error": {
            "message": "The server is shutting down.",
            "type": "service_unavailable",
            "param": None,
            "code": 503,
            "request_id": request_id,
        }
    }
