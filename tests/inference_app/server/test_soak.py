"""Soak: a server held at 2x its slot capacity, every request accounted for.

Clients (twice as many as decode slots) send mixed requests back to back — `/generate` plain and
streamed, `/v1/completions` plain and streamed, chat — for a fixed time. Asserted afterwards:
- zero lost requests: each one got a complete 200 (right token count, stream properly ended)
  or a documented 429/503 with Retry-After (then retried); no 5xx, no dropped connection;
- no leaked slots: /metrics shows no active slot, nothing in flight or queued, and the server's
  count of successful requests equals the clients' count;
- resident memory growth (after the first quarter, once allocations settle) stays bounded.

The short version (fake engine, ~10 s) runs in `make test`; the slow one serves the real model.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.inference_app.server.test_faults import expected_text, start
from tests.inference_app.serving_cases import ServerProcess

KINDS = ("generate", "generate-stream", "completions", "completions-stream", "chat")


@dataclass
class SoakReport:
    sent: int = 0
    ok: int = 0
    rejected: Counter[int] = field(default_factory=Counter)  # documented 429/503, then retried
    lost: list[str] = field(default_factory=list)  # anything else: must stay empty
    rss_kib: list[int] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def one_request(client: httpx.Client, kind: str, prompt: str, n: int) -> tuple[int, str, int, str | None]:
    """Send one request; return (status, text, completion tokens, finish_reason) of a complete answer."""
    if kind.startswith("generate"):
        body: dict[str, object] = {"prompt": prompt, "max_tokens": n, "ignore_eos": True, "temperature": 0.0}
        path = "/generate"
    elif kind.startswith("completions"):
        body, path = (
            {"prompt": prompt, "max_tokens": n, "ignore_eos": True, "temperature": 0.0},
            "/v1/completions",
        )
    else:
        body = {
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": n,
            "ignore_eos": True,
            "temperature": 0.0,
        }
        path = "/v1/chat/completions"
    if not kind.endswith("stream"):
        r = client.post(path, json=body)
        if r.status_code != 200:
            return r.status_code, r.text, 0, None
        data = r.json()
        if kind == "generate":
            return 200, data["response"], -1, None
        choice = data["choices"][0]
        text = choice["text"] if kind == "completions" else choice["message"]["content"]
        return 200, text, data["usage"]["completion_tokens"], choice["finish_reason"]
    body["stream"] = True
    with client.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            return r.status_code, r.read().decode(), 0, None
        parts, tokens, finish, done = [], -1, None, False
        for line in r.iter_lines():
            line = line.removeprefix("data: ").strip()
            if not line:
                continue
            if line == "[DONE]":
                done = True
                continue
            event = json.loads(line)
            if "error" in event:
                return 500, json.dumps(event), 0, None
            if kind == "generate-stream":
                parts.append(event.get("response", ""))
                if "finish_reason" in event:
                    finish, tokens, done = event["finish_reason"], event["usage"]["completion_tokens"], True
            else:
                for c in event.get("choices", []):
                    parts.append(c.get("text", ""))
                    finish = c.get("finish_reason") or finish
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
        if not done:
            return 599, "stream ended without its final event", 0, None
        return 200, "".join(parts), tokens, finish


def soak(
    srv: ServerProcess, *, clients: int, duration_s: float, max_tokens: tuple[int, int], check_text: bool
) -> SoakReport:
    report = SoakReport()
    lock = threading.Lock()
    deadline = time.monotonic() + duration_s
    counter = itertools.count()

    def run(i: int) -> None:
        rng = random.Random(i)
        with httpx.Client(base_url=srv.base, timeout=120) as client:
            while time.monotonic() < deadline:
                kind = rng.choice(KINDS)
                n = rng.randint(*max_tokens)
                prompt = f"soak request {next(counter)} from client {i}"
                while True:  # a documented rejection is retried; it is not a lost request
                    with lock:
                        report.sent += 1
                    try:
                        status, text, tokens, finish = one_request(client, kind, prompt, n)
                    except (httpx.TransportError, json.JSONDecodeError, KeyError) as exc:
                        status, text, tokens, finish = 598, f"{type(exc).__name__}: {exc}", 0, None
                    if status in (429, 503):
                        with lock:
                            report.rejected[status] += 1
                        time.sleep(0.05)
                        continue
                    break
                complete = status == 200 and tokens in (-1, n) and finish in (None, "length")
                if complete and check_text and kind != "chat":
                    complete = text == expected_text(prompt, n)
                with lock:
                    report.kinds[kind] += 1
                    if complete:
                        report.ok += 1
                    else:
                        report.lost.append(
                            f"{kind} {prompt!r}: {status} {text[:200]!r} tokens={tokens} {finish}"
                        )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    report.rss_kib.append(rss_kib(srv.proc.pid))
    while any(t.is_alive() for t in threads):
        time.sleep(duration_s / 8)
        report.rss_kib.append(rss_kib(srv.proc.pid))
    for t in threads:
        t.join()
    return report


def check_soak(srv: ServerProcess, report: SoakReport, ok_before: float, rss_bound_kib: int) -> None:
    assert report.lost == []
    assert report.ok > 0 and set(report.kinds) == set(KINDS)
    assert srv.metric("inference_active_slots") == 0  # no leaked slot
    assert srv.metric("inference_requests_in_flight") == 0
    assert srv.metric("inference_queue_depth") == 0
    assert srv.metric("inference_requests_total", 'outcome="ok"') - ok_before == report.ok
    settled = report.rss_kib[len(report.rss_kib) // 4]
    assert max(report.rss_kib) - settled < rss_bound_kib, report.rss_kib
    print(
        f"\nsoak: {report.ok} ok, rejected {dict(report.rejected)}, lost {len(report.lost)}, "
        f"by kind {dict(report.kinds)}, RSS KiB {report.rss_kib[0]} -> {report.rss_kib[-1]}"
    )


def test_short_soak_at_twice_slot_capacity() -> None:
    srv = start("--step-delay", "0.004", "--max-slots", "4", "--max-queue", "4")
    try:
        report = soak(srv, clients=8, duration_s=8, max_tokens=(4, 60), check_text=True)
        check_soak(srv, report, ok_before=0, rss_bound_kib=32 * 1024)
        assert report.ok >= 100
    finally:
        assert srv.terminate() == 0


@pytest.mark.slow
def test_soak_real_model_at_twice_slot_capacity() -> None:
    """A few minutes of the real SmolLM2 server at 2x its 4 slots (run with `make test-slow`)."""
    srv = ServerProcess(
        [
            "serve",
            "--max-slots",
            "4",
            "--max-queue",
            "4",
            "--max-prefill-length",
            "128",
            "--max-target-length",
            "256",
            "--log-level",
            "warning",
        ]
    )
    try:
        srv.wait_healthy(timeout=600)
        report = soak(srv, clients=8, duration_s=180, max_tokens=(4, 24), check_text=False)
        check_soak(srv, report, ok_before=0, rss_bound_kib=64 * 1024)
    finally:
        assert srv.terminate() == 0
