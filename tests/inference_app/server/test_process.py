"""A real `serve` process with the embedded SmolLM2 model on loopback: the suite's one real-model
server (`smollm2_server`), which the real-client tests share."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.inference_app.serving_cases import (
    SMOLLM2_PREFILL,
    SMOLLM2_TARGET,
    ServerProcess,
    bad_inputs,
    check_error,
)

GUIDE_PROMPT = "What are the top 5 programming languages"
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "List three colors:",
    "2 + 2 =",
    "The best way to learn a new language is",
    "Translate to French: good morning",
    "Q: Why is the sky blue?\nA:",
]


@pytest.fixture(scope="module")
def server(smollm2_server: ServerProcess) -> ServerProcess:
    return smollm2_server


def generate(srv: ServerProcess, prompt: str, max_tokens: int, **extra: object) -> str:
    r = httpx.post(
        f"{srv.base}/generate", json={"prompt": prompt, "max_tokens": max_tokens, **extra}, timeout=120
    )
    assert r.status_code == 200, r.text
    text = r.json()["response"]
    assert isinstance(text, str)
    return text


def test_guide_request_and_health_turns_green_after_warmup(server: ServerProcess) -> None:
    assert server.health_codes[0] == 503 and server.health_codes[-1] == 200  # port open before warm-up
    logs = server.logs()
    for line in (
        "Initializing the driver with 1 prefill engines and 1 generate engines in interleaved mode",
        "Chunked prefill: prompts run inside the generate steps",  # the CPU engine's default
        "Spinning up generate thread 0.",
        "Spinning up detokenize thread 0.",
        "Driver initialized",
        "Uvicorn running on http://127.0.0.1",
    ):
        assert line in logs, line
    assert logs.index("Driver initialized") < logs.index("Ready: /healthcheck is green")
    r = httpx.post(
        f"{server.base}/generate",
        content=json.dumps({"prompt": GUIDE_PROMPT, "max_tokens": 200}),
        headers={"Content-type": "application/json"},
        timeout=120,
    )
    assert r.status_code == 200
    text = r.json()["response"]
    assert text.strip() and not text.startswith(GUIDE_PROMPT)  # a continuation, no echo


def test_concurrent_greedy_requests_equal_each_served_alone(server: ServerProcess) -> None:
    cases = [(PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS)), 3 + (i * 5) % 7) for i in range(16)]
    alone = [generate(server, p, n) for p, n in cases]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda c: generate(server, *c), cases))
    assert together == alone
    assert len({t for t in alone}) > 8  # genuinely different prompts and lengths


def test_streaming_equals_non_streaming(server: ServerProcess) -> None:
    prompt, n = PROMPTS[2], 12
    whole = generate(server, prompt, n, ignore_eos=True)
    with httpx.stream(
        "POST",
        f"{server.base}/generate",
        json={"prompt": prompt, "max_tokens": n, "stream": True, "ignore_eos": True},
        timeout=120,
    ) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert "".join(x["response"] for x in lines[:-1]) == whole and len(lines) > 3
    assert lines[-1]["finish_reason"] == "length" and lines[-1]["usage"]["completion_tokens"] == n
    r = httpx.post(
        f"{server.base}/v1/completions",
        json={
            "prompt": prompt,
            "max_tokens": n,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},  # usage in a stream only when asked for, as OpenAI
        },
        timeout=120,
    )
    events = r.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == whole
    assert chunks[-1]["usage"]["completion_tokens"] == n


def test_chat_completion_answers(server: ServerProcess) -> None:
    # Asked "What is the capital of France?", the GGUF's Q4_1 weights (served as stored by default)
    # answer "L'Étoile, la Marseillaise, ..." greedily, and so does llama.cpp on the same file;
    # float32 says Paris. Asked this way, all three say Paris.
    r = httpx.post(
        f"{server.base}/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "Name the capital city of France."}],
            "max_tokens": 20,
            "temperature": 0,
        },
        timeout=120,
    )
    out = r.json()
    assert r.status_code == 200 and "Paris" in out["choices"][0]["message"]["content"]
    assert out["usage"]["prompt_tokens"] > 10 and out["choices"][0]["finish_reason"] in ("stop", "length")


def test_disconnect_mid_stream_frees_the_slot(server: ServerProcess) -> None:
    cancelled_before = server.metric("inference_requests_total", 'outcome="cancelled"')
    with (
        httpx.Client(timeout=120) as client,
        client.stream(
            "POST",
            f"{server.base}/generate",
            json={"prompt": PROMPTS[0], "max_tokens": 150, "ignore_eos": True, "stream": True},
        ) as r,
    ):
        lines = r.iter_lines()
        next(lines), next(lines)
        assert server.metric("inference_active_slots") >= 1
    deadline = time.monotonic() + 10
    while server.metric("inference_active_slots") > 0:
        assert time.monotonic() < deadline, "slot not freed after the client went away"
        time.sleep(0.05)
    assert server.metric("inference_requests_total", 'outcome="cancelled"') == cancelled_before + 1
    assert generate(server, PROMPTS[4], 4)


def test_bad_inputs_get_4xx_and_the_server_still_serves(server: ServerProcess) -> None:
    for case in bad_inputs(SMOLLM2_PREFILL, SMOLLM2_TARGET):
        r = httpx.request(
            case.method,
            f"{server.base}{case.path}",
            content=case.body,
            headers={"content-type": "application/json"},
            timeout=30,
        )
        check_error(case, r)
    assert httpx.get(f"{server.base}/healthcheck").status_code == 200
    assert generate(server, PROMPTS[3], 5)
