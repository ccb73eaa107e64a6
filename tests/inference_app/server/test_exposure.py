"""What the server shows and counts outside the happy path, in process (issue 13, items 4, 5, 9).

- 503s answered while the model is still loading are counted as `rejected_unavailable`;
- `/healthcheck` names a failed start-up's exception type, never its message (which may hold a
  filesystem path): the message is in the log;
- an unexpected error (a bug) answers 500 with the request id, no exception text, and is counted;
- `/docs` is served only with `--docs`.
"""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from inference_app.engine.api import Engine
from inference_app.server.app import create_app
from inference_app.server.options import ServerOptions
from tests.inference_app.fakes import ByteTokenizer, FakeEngine

OPTIONS = ServerOptions(model_name="fake")
SECRET = "/home/operator/secret-models/llama.gguf"


def metric(client: TestClient, name: str, labels: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    raise KeyError(name)


def wait_for_phase(client: TestClient, phase: str) -> None:
    deadline = time.monotonic() + 10
    while client.get("/").json()["phase"] != phase:
        assert time.monotonic() < deadline, f"phase {phase} not reached"
        time.sleep(0.01)


def test_503s_while_loading_are_counted() -> None:
    loaded = threading.Event()

    def slow_factory() -> Engine:
        loaded.wait(30)
        return FakeEngine(step_delay=0.001)

    with TestClient(create_app(OPTIONS, engine_factory=slow_factory)) as client:
        try:
            requests = [
                ("/generate", {"prompt": "hi"}),
                ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                ("/v1/completions", {"prompt": "hi"}),
            ]
            for path, body in requests:
                r = client.post(path, json=body)
                assert r.status_code == 503 and r.headers["retry-after"], r.text
                error = r.json()["error"]
                assert error["code"] == 503 and "loading" in error["message"], error
            assert metric(client, "inference_requests_total", 'outcome="rejected_unavailable"') == 3
        finally:
            loaded.set()


def test_healthcheck_does_not_show_the_start_up_error_message(caplog: pytest.LogCaptureFixture) -> None:
    def failing_factory() -> Engine:
        raise FileNotFoundError(f"no such file: {SECRET}")

    with TestClient(create_app(OPTIONS, engine_factory=failing_factory)) as client:
        wait_for_phase(client, "failed")
        r = client.get("/healthcheck")
        assert r.status_code == 503
        assert SECRET not in r.text and "FileNotFoundError" in r.text and "server log" in r.text, r.text
        answer = client.post("/generate", json={"prompt": "hi"})
        assert answer.status_code == 503 and SECRET not in answer.text, answer.text
        assert SECRET not in client.get("/").text
    assert SECRET in caplog.text  # the operator still finds it


class BrokenTokenizer(ByteTokenizer):
    """A bug below the routes: tokenizing raises something no handler expects."""

    def encode(self, text: str) -> list[int]:
        raise RuntimeError(f"cannot open {SECRET}")


def test_an_unexpected_error_is_500_with_the_request_id_and_no_internals() -> None:
    engine = FakeEngine(step_delay=0.001)
    engine.tokenizer = BrokenTokenizer()
    app = create_app(OPTIONS, engine=engine)
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_for_phase(client, "ready")
        before = metric(client, "inference_requests_total", 'outcome="error"')
        r = client.post("/generate", json={"prompt": "hi"})
        assert r.status_code == 500, r.text
        error = r.json()["error"]
        assert error["request_id"] and r.headers["x-request-id"] == error["request_id"]
        assert error["request_id"] in error["message"] and "server log" in error["message"]
        assert SECRET not in r.text and "RuntimeError" not in r.text
        assert metric(client, "inference_requests_total", 'outcome="error"') == before + 1


def test_docs_only_with_the_flag() -> None:
    engine = FakeEngine(step_delay=0.001)
    with TestClient(create_app(OPTIONS, engine=engine)) as client:
        assert client.get("/docs").status_code == 404
        assert client.get("/openapi.json").status_code == 200  # the schema stays: clients and fuzzers read it
    with TestClient(create_app(ServerOptions(model_name="fake", docs=True), engine=engine)) as client:
        assert client.get("/docs").status_code == 200
