"""Fault injection against a real server process (the fake engine keeps it fast and deterministic).

Each fault has its expected outcome asserted:
- an exception inside one request's processing -> that request gets 500 with a message, every
  other request completes correctly, the server stays healthy;
- a client that reads very slowly -> it still gets its whole response, others are not held up;
- clients that disconnect mid-stream -> their slots are freed (metrics) and serving goes on;
- SIGTERM during load -> everything admitted finishes complete, later requests get 503, exit 0.

Also the entry point for those server processes: `python -m tests.inference_app.server.test_faults`
(FakeEngine wrapped in serve's `FaultInjectingEngine`, through the real `run_server`).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from inference_app.engine.api import SamplingParams
from tests.inference_app.fakes import CORPUS_IDS, ByteTokenizer, continuation_start
from tests.inference_app.serving_cases import ServerProcess

MARKER = "BOOM"


def serve_main(argv: list[str] | None = None) -> int:
    """A real server around FakeEngine + fault injection for prompts containing MARKER."""
    from inference_app.engine.api import Engine, EngineSettings
    from inference_app.server.cli import LOG_FORMAT, ServerOptions, run_server
    from inference_app.testing.faults import FaultInjectingEngine, parse_fault_spec
    from tests.inference_app.fakes import FakeEngine

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--step-delay", type=float, default=0.01)
    p.add_argument("--max-slots", type=int, default=4)
    p.add_argument("--max-queue", type=int, default=16)
    p.add_argument("--drain-timeout", type=float, default=30.0)
    p.add_argument("--fault", default=f"prefill:{MARKER}")
    args = p.parse_args(argv)
    stage, marker = parse_fault_spec(args.fault)
    settings = EngineSettings(max_slots=args.max_slots, max_prefill_length=64, max_target_length=4096)

    def factory() -> Engine:
        fake = FakeEngine(settings=settings, step_delay=args.step_delay, warmup_delay=0.1)
        return FaultInjectingEngine(fake, stage, marker)

    options = ServerOptions(
        host="127.0.0.1",
        port=args.port,
        model_name="fake",
        max_queue=args.max_queue,
        drain_timeout_s=args.drain_timeout,
    )
    return run_server(options, factory)


def start(*args: str) -> ServerProcess:
    srv = ServerProcess(list(args), module="tests.inference_app.server.test_faults")
    srv.wait_healthy(timeout=60)
    return srv


def expected_text(prompt: str, max_tokens: int) -> str:
    """What the fake engine streams with `ignore_eos` (it cycles through its corpus past EOS)."""
    start = continuation_start(ByteTokenizer().encode(prompt), SamplingParams())
    ids = [CORPUS_IDS[(start + k) % len(CORPUS_IDS)] for k in range(max_tokens)]
    return ByteTokenizer().decode([i for i in ids if i < 256])


def generate(base: str, prompt: str, max_tokens: int, timeout: float = 60) -> httpx.Response:
    return httpx.post(
        f"{base}/generate",
        json={"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True},
        timeout=timeout,
    )


def counter(srv: ServerProcess, outcome: str) -> float:
    """`inference_requests_total{outcome=...}`; 0 before the first such request."""
    try:
        return srv.metric("inference_requests_total", f'outcome="{outcome}"')
    except KeyError:
        return 0.0


def wait_for(cond: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    srv = start("--step-delay", "0.003", "--max-slots", "4")
    yield srv
    srv.terminate()


def test_exception_in_one_request_fails_only_that_request(server: ServerProcess) -> None:
    errors_before = counter(server, "error")
    prompts = [f"fine {i}" for i in range(7)] + [f"{MARKER} please"]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda p: generate(server.base, p, 40), prompts))
    for prompt, r in zip(prompts[:-1], results[:-1], strict=True):
        assert r.status_code == 200 and r.json()["response"] == expected_text(prompt, 40)
    boom = results[-1]
    assert boom.status_code == 500
    assert "injected fault in prefill" in boom.json()["error"]["message"]
    assert httpx.get(f"{server.base}/healthcheck").status_code == 200
    assert generate(server.base, "after the fault", 5).json()["response"] == expected_text(
        "after the fault", 5
    )
    assert counter(server, "error") == errors_before + 1


def test_slow_reader_gets_everything_and_does_not_hold_up_others(server: ServerProcess) -> None:
    prompt, n = "slow reader", 1200
    body = json.dumps({"prompt": prompt, "max_tokens": n, "ignore_eos": True, "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(
        b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    received = bytearray()
    tokens_before = server.metric("inference_generated_tokens_total")
    # The slow client reads nothing while its request streams into the socket buffers.
    wait_for(lambda: server.metric("inference_generated_tokens_total") >= tokens_before + 100)
    t0 = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        others = list(pool.map(lambda i: generate(server.base, f"other {i}", 30, timeout=20), range(6)))
    assert all(r.status_code == 200 for r in others) and time.monotonic() - t0 < 10
    sock.settimeout(30)
    while chunk := sock.recv(512):  # now read, a little at a time
        received += chunk
        time.sleep(0.0005)
    sock.close()
    head, _, payload = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    lines = [json.loads(x) for x in dechunk(payload).splitlines() if x.strip()]
    assert "".join(x.get("response", "") for x in lines) == expected_text(prompt, n)
    assert lines[-1]["finish_reason"] == "length"
    wait_for(lambda: server.metric("inference_active_slots") == 0)


def dechunk(data: bytes) -> bytes:
    """Undo HTTP/1.1 chunked transfer encoding."""
    out, i = bytearray(), 0
    while True:
        j = data.index(b"\r\n", i)
        size = int(data[i:j].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += data[j + 2 : j + 2 + size]
        i = j + 2 + size + 2


def test_disconnecting_clients_free_their_slots(server: ServerProcess) -> None:
    cancelled_before = counter(server, "cancelled")

    def leave_early(i: int) -> None:
        body = {"prompt": f"leaver {i}", "max_tokens": 3000, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{server.base}/generate", json=body, timeout=20) as r:
            assert r.status_code == 200
            next(r.iter_lines())  # one chunk, then hang up

    threads = [threading.Thread(target=leave_early, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: server.metric("inference_active_slots") == 0, timeout=5)
    assert server.metric("inference_requests_in_flight") == 0
    assert counter(server, "cancelled") == cancelled_before + 4
    assert generate(server.base, "still serving", 8).json()["response"] == expected_text("still serving", 8)


def test_sigterm_during_load_finishes_admitted_work_and_exits_0() -> None:
    srv = start("--step-delay", "0.01", "--max-slots", "4", "--max-queue", "8", "--drain-timeout", "30")
    try:
        outcomes: list[tuple[str, int, str]] = []
        stop = threading.Event()

        def client(i: int) -> None:  # 2x slot capacity of clients, each sending back to back
            k = 0
            while not stop.is_set():
                prompt = f"load {i}.{k}"
                k += 1
                try:
                    r = generate(srv.base, prompt, 25, timeout=30)
                except httpx.TransportError:
                    return  # the server has exited: refused connections are expected now
                outcomes.append((prompt, r.status_code, r.text))
                if r.status_code == 503:
                    return

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        wait_for(lambda: len(outcomes) >= 8 and srv.metric("inference_active_slots") == 4)
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(60) == 0
        stop.set()
        for t in threads:
            t.join(30)
        ok = [(p, text) for p, code, text in outcomes if code == 200]
        assert len(ok) >= 8
        for prompt, text in ok:  # nothing admitted was cut short
            assert json.loads(text)["response"] == expected_text(prompt, 25)
        assert {code for _, code, _ in outcomes} <= {200, 503}
        assert "SIGTERM: draining" in srv.logs()
    finally:
        srv.terminate()


if __name__ == "__main__":
    raise SystemExit(serve_main())
