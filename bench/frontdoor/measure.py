"""Issue 13's attacks against a real server process (fake engine), with a health probe beside each.

    .venv/bin/python -m bench.frontdoor.measure --name after                 # this tree
    .venv/bin/python -m bench.frontdoor.measure --name before --tree /tmp/old  # e.g. `git archive` of main

For each attack: what the attacker saw, the server's RSS and open descriptors, `/healthcheck`
latency (a new connection every 100 ms, as the kubelet probes) and whether a normal `/generate`
sent during the attack completed. Results go to bench/frontdoor/results/<name>.json; table.md is
written from all of them. The server runs with a file descriptor limit of 1024 so that exhausting
it takes seconds, not minutes.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.inference_app.server import attacks as a
from tests.inference_app.serving_cases import REPO, ServerProcess

RESULTS = Path(__file__).parent / "results"
NOFILE = 1024


def observe(srv: ServerProcess, attack: Callable[[], str]) -> dict[str, Any]:
    """Run `attack` with the prober and one /generate beside it."""
    rss0 = a.rss_mib(srv.proc.pid)
    with a.health_probe(srv.base) as probe, a.peak_usage(srv.proc.pid) as peak:
        time.sleep(0.3)
        t0 = time.monotonic()
        outcome = attack()
        seconds = time.monotonic() - t0
        status, gen_s = a.generate_ok(srv.base, timeout=300)
    return {
        "outcome": outcome,
        "seconds": round(seconds, 2),
        "health": probe.summary(),
        "health_p99_ms": round(probe.percentile(0.99) * 1e3),
        "health_failed": len(probe.failures),
        "generate": f"{status} in {gen_s:.2f}s",
        "rss_mib": f"{rss0:.0f} -> peak {peak.rss_mib:.0f}",
        "open_fds_peak": peak.fds,
    }


def describe(answer: a.Answer) -> str:
    status = answer.status if answer.status is not None else "no answer"
    return f"{status}, connection {answer.end} after {answer.seconds:.1f}s"


def attacks(port: int, base: str, big_mb: int) -> dict[str, Callable[[], str]]:
    body = b'{"prompt": "hi", "max_tokens": 3, "stream": true}'
    plain = b'{"prompt": "hi", "max_tokens": 3}'

    def big_header() -> str:
        answer, sent = a.big_header(port, big_mb << 20, timeout=120)
        return f"{big_mb} MiB header: {describe(answer)}, {sent >> 20} MiB taken"

    def held(count: int) -> Callable[[], str]:
        def run() -> str:
            with a.held_connections(port, count) as socks:
                time.sleep(1)
                late = a.exchange(port, a.request_bytes("GET", "/healthcheck"), timeout=3)
                closed = a.closed_by_server(socks)
            return f"{len(socks)} opened, {closed} closed by the server; one more client: {describe(late)}"

        return run

    def unfinished() -> str:
        sizes = []
        with a.held_connections(port, 8, first_bytes=b"") as socks:
            for s in socks:
                s.sendall(b"GET / HTTP/1.1\r\nX-Big: ")
                sent = 0
                s.settimeout(2)
                try:
                    while sent < 16 << 20:
                        sent += s.send(b"a" * 65536)
                except OSError:
                    pass
                sizes.append(sent >> 20)
            time.sleep(1)
        return f"8 unfinished heads, MiB taken each: {sizes}"

    return {
        "1 one big header": big_header,
        "1 10k headers": lambda: describe(a.many_headers(port, 10_000)),
        "1 8 unfinished 16 MiB heads": unfinished,
        "2 1500 half-open connections": held(1500),
        "2 slowloris 1 byte/s": lambda: "{} ({} bytes sent)".format(*_pair(a.slowloris(port, 1.0, 40))),
        "2 silent connection": lambda: describe(a.silent(port, 40)),
        "2 slow body 1 byte/s": lambda: describe(a.slow_body(port, 100, 1.0, 45)),
        "4 JSON nested 100k deep": lambda: describe(
            a.exchange(port, a.json_post("/generate", b"[" * 100_000))
        ),
        "4 5000-digit integer": lambda: describe(
            a.exchange(
                port, a.json_post("/generate", b'{"prompt": "hi", "max_tokens": ' + b"9" * 5000 + b"}")
            )
        ),
        "7 keep-alive upload after 413 (impolite)": lambda: _upload(port, close=False, polite=False),
        "7 Connection: close upload after 413 (polite)": lambda: _upload(port, close=True, polite=True),
        "8 HTTP/1.0 streaming": lambda: (
            "chunked"
            if b"transfer-encoding: chunked"
            in a.exchange(
                port,
                a.request_bytes(
                    "POST", "/generate", body, {"Content-Type": "application/json"}, version="HTTP/1.0"
                ),
            ).raw.lower()
            else "not chunked"
        ),
        "8 HTTP/1.1 without Host": lambda: describe(
            a.exchange(port, b"GET /healthcheck HTTP/1.1\r\n\r\n", 2)
        ),
        "8 half-close after a request": lambda: describe(
            a.exchange(port, a.json_post("/generate", plain), half_close=True)
        ),
        "8 307 Location": lambda: str(
            a.exchange(port, a.json_post("/generate/", plain, Host="evil.example"), 2).header("location")
        ),
        "9 text/plain body": lambda: describe(
            a.exchange(port, a.request_bytes("POST", "/generate", plain, {"Content-Type": "text/plain"}), 3)
        ),
    }


def real_model_attacks(base: str) -> dict[str, Callable[[], str]]:
    """Item 3 needs the real tokenizer and chat template (the fake engine's are free)."""

    def prompts(chat: bool) -> Callable[[], str]:
        def run() -> str:
            sent, statuses = a.big_prompts(base, clients=4, seconds=10, chat=chat)
            return f"{sent} requests of 1 MB, statuses {statuses}"

        return run

    return {
        "3 4 clients posting 1 MB prompts": prompts(False),
        "3 4 clients posting 1 MB chat messages": prompts(True),
    }


def _pair(pair: tuple[a.Answer, int]) -> tuple[str, int]:
    return describe(pair[0]), pair[1]


def _upload(port: int, close: bool, polite: bool) -> str:
    answer, sent = a.upload_after_413(port, close=close, upload_bytes=256 << 20, limit_s=15, polite=polite)
    return f"{describe(answer)}, server took {sent >> 20} MiB"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--tree", type=Path, default=REPO, help="source tree to serve (default: this one)")
    p.add_argument("--big-mb", type=int, default=64, help="size of the one big header")
    p.add_argument("--only", default="", help="run only attacks whose name contains this")
    p.add_argument(
        "--real", action="store_true", help="serve SmolLM2 (item 3: tokenization) instead of the fake"
    )
    args = p.parse_args()
    if args.real:
        # No warm-up: tokenization needs no compiled step, and compiling every bucket takes minutes here.
        srv = ServerProcess(
            ["serve", "--max-slots", "4", "--no-warmup", "--log-level", "warning"],
            nofile=NOFILE,
            cwd=args.tree,
        )
    else:
        srv = ServerProcess(
            ["--step-delay", "0.01"], module="tests.inference_app.fakes", nofile=NOFILE, cwd=args.tree
        )
    results: dict[str, Any] = {}
    try:
        srv.wait_healthy(timeout=900)
        chosen = real_model_attacks(srv.base) if args.real else attacks(srv.port, srv.base, args.big_mb)
        for name, attack in chosen.items():
            if args.only not in name:
                continue
            if srv.proc.poll() is not None:
                results[name] = {"outcome": "server exited"}
                continue
            results[name] = observe(srv, attack)
            print(f"{name}: {json.dumps(results[name])}", flush=True)
            time.sleep(1)
    finally:
        srv.terminate()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{args.name}.json"
    if args.only and out.exists():  # re-measured rows replace theirs, the others stay
        results = {**json.loads(out.read_text()), **results}
    out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
