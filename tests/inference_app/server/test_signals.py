"""Real server processes (sockets, signals) around the fake engine: SIGTERM drain, queue bound.

The fake engine keeps these fast and their timing predictable; the same entry point
(`run_server`) serves the real model.
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor

import httpx

from tests.inference_app.serving_cases import ServerProcess


def fake_server(*args: str) -> ServerProcess:
    srv = ServerProcess(list(args), module="tests.inference_app.fakes")
    srv.wait_healthy(timeout=60)
    return srv


def post(srv: ServerProcess, prompt: str, max_tokens: int) -> httpx.Response:
    body = {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True}
    return httpx.post(f"{srv.base}/generate", json=body, timeout=60)


def wait_for(cond: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_sigterm_drains_in_flight_requests_then_exits_0() -> None:
    srv = fake_server("--step-delay", "0.02", "--max-slots", "2")
    try:
        with ThreadPoolExecutor(2) as pool:
            in_flight: list[Future[httpx.Response]] = [
                pool.submit(post, srv, f"drain {i}", 120) for i in range(2)
            ]
            wait_for(lambda: srv.metric("inference_active_slots") == 2)
            srv.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: httpx.get(f"{srv.base}/healthcheck").status_code == 503, timeout=5)
            health = httpx.get(f"{srv.base}/healthcheck").json()["response"]
            assert health == {"is_live": False, "phase": "draining"}
            late = httpx.post(f"{srv.base}/generate", json={"prompt": "late", "max_tokens": 3}, timeout=10)
            assert late.status_code == 503 and late.headers["retry-after"]
            results = [f.result(timeout=30) for f in in_flight]
        assert [r.status_code for r in results] == [200, 200]
        assert all(len(r.json()["response"].encode()) >= 100 for r in results)  # ran to completion
        assert srv.proc.wait(30) == 0
        logs = srv.logs()
        assert "SIGTERM: draining" in logs and "Drained: no request in flight" in logs
    finally:
        srv.terminate()


def test_drain_deadline_fails_the_rest_with_503_and_still_exits_0() -> None:
    srv = fake_server("--step-delay", "0.05", "--max-slots", "1", "--drain-timeout", "0.5")
    try:
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(post, srv, "too slow", 300)  # 15 s of decoding
            wait_for(lambda: srv.metric("inference_active_slots") == 1)
            srv.proc.send_signal(signal.SIGTERM)
            r = slow.result(timeout=30)
        assert r.status_code == 503 and "drain deadline" in r.json()["error"]["message"]
        assert srv.proc.wait(30) == 0
    finally:
        srv.terminate()


def test_full_queue_answers_429_with_retry_after_and_recovers() -> None:
    srv = fake_server("--step-delay", "0.05", "--max-slots", "1", "--max-queue", "1")
    try:
        with ThreadPoolExecutor(10) as pool:
            responses = list(pool.map(lambda i: post(srv, f"burst {i}", 20), range(10)))
        codes = sorted(r.status_code for r in responses)
        assert set(codes) == {200, 429}, codes
        assert codes.count(200) >= 1 and codes.count(429) >= 5  # 1 slot + 1 prefilled + 1 queued admitted
        rejected = next(r for r in responses if r.status_code == 429)
        assert (
            rejected.headers["retry-after"] == "1" and "queue is full" in rejected.json()["error"]["message"]
        )
        assert srv.metric("inference_requests_total", 'outcome="rejected_queue_full"') == codes.count(429)
        assert post(srv, "after the burst", 5).status_code == 200
    finally:
        assert srv.terminate() == 0
