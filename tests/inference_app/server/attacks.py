"""Attacks on the HTTP front door over raw sockets, and the health prober that runs beside them.

Shared by `test_adversarial.py` (pass/fail) and `bench/frontdoor/measure.py` (numbers before and
after a change). Every loop here is bounded in count and time and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx

End = Literal["eof", "reset", "timeout", "open"]


@dataclass
class Answer:
    """What came back on one connection: the raw bytes and how the connection ended."""

    raw: bytes
    end: End
    seconds: float

    @property
    def status(self) -> int | None:
        line = self.raw.split(b"\r\n", 1)[0]
        parts = line.split()
        return int(parts[1]) if len(parts) >= 2 and line.startswith(b"HTTP/") and parts[1].isdigit() else None

    @property
    def head(self) -> bytes:
        return self.raw.split(b"\r\n\r\n", 1)[0]

    @property
    def body(self) -> bytes:
        return self.raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in self.raw else b""

    @property
    def complete(self) -> bool:
        """Head and a body of its Content-Length arrived."""
        length = self.header("content-length")
        return b"\r\n\r\n" in self.raw and length is not None and len(self.body) >= int(length)

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_answer(sock: socket.socket, timeout: float, started: float | None = None) -> Answer:
    """Read until the server closes, resets, or `timeout` passes; never sends anything."""
    t0 = started if started is not None else time.monotonic()
    deadline = time.monotonic() + timeout
    data = bytearray()
    end: End = "timeout"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except (ConnectionResetError, BrokenPipeError):
            end = "reset"
            break
        if not chunk:
            end = "eof"
            break
        data += chunk
    return Answer(bytes(data), end, time.monotonic() - t0)


def exchange(port: int, data: bytes, timeout: float = 5.0, half_close: bool = False) -> Answer:
    """Send `data` on a new connection (optionally shut the sending side) and read the answer."""
    t0 = time.monotonic()
    with connect(port) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (ConnectionResetError, BrokenPipeError):
            return Answer(b"", "reset", time.monotonic() - t0)
        return read_answer(sock, timeout, t0)


def request_bytes(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    version: str = "HTTP/1.1",
) -> bytes:
    lines = [f"{method} {path} {version}"]
    all_headers = {"Host": "127.0.0.1", **(headers or {})}
    if body and "Transfer-Encoding" not in all_headers:
        all_headers.setdefault("Content-Length", str(len(body)))
    lines += [f"{k}: {v}" for k, v in all_headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def json_post(path: str, body: bytes, **headers: str) -> bytes:
    return request_bytes("POST", path, body, {"Content-Type": "application/json", **headers})


# -- health prober ----------------------------------------------------------------------------
@dataclass
class ProbeStats:
    latencies: list[float] = field(default_factory=list)  # of successful probes, seconds
    failures: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.latencies) + len(self.failures)

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("inf")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> str:
        return (
            f"{self.count} probes, {len(self.failures)} failed, p50 {self.percentile(0.5) * 1e3:.0f} ms, "
            f"p99 {self.percentile(0.99) * 1e3:.0f} ms, max {max(self.latencies, default=0) * 1e3:.0f} ms"
        )


@contextlib.contextmanager
def health_probe(base: str, interval: float = 0.1, timeout: float = 2.0) -> Iterator[ProbeStats]:
    """GET /healthcheck every `interval` s on a new connection each time, as the kubelet does
    (raw sockets: the prober's own cost stays out of the latency)."""
    stats = ProbeStats()
    stop = threading.Event()

    port = int(base.rsplit(":", 1)[1])
    probe = request_bytes("GET", "/healthcheck", headers={"Connection": "close"})

    def run() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                answer = exchange(port, probe, timeout=timeout)
                if answer.status == 200 and answer.complete:
                    stats.latencies.append(time.monotonic() - t0)
                else:
                    stats.failures.append(f"{answer.status} {answer.end} after {answer.seconds:.2f}s")
            except OSError as exc:
                stats.failures.append(f"{type(exc).__name__}: {exc}")
            stop.wait(max(0.0, interval - (time.monotonic() - t0)))

    thread = threading.Thread(target=run, name="health-probe", daemon=True)
    thread.start()
    try:
        yield stats
    finally:
        stop.set()
        thread.join(timeout + 1)


def generate_ok(base: str, timeout: float = 30.0) -> tuple[int, float]:
    """A normal /generate: (status, seconds)."""
    t0 = time.monotonic()
    try:
        r = httpx.post(
            f"{base}/generate", json={"prompt": "a normal request", "max_tokens": 8}, timeout=timeout
        )
        return r.status_code, time.monotonic() - t0
    except httpx.HTTPError:
        return 0, time.monotonic() - t0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


@dataclass
class Peak:
    rss_mib: float = 0.0
    fds: int = 0


@contextlib.contextmanager
def peak_usage(pid: int, interval: float = 0.2) -> Iterator[Peak]:
    """The server's largest RSS and open descriptor count while the block runs."""
    peak = Peak()
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                peak.rss_mib = max(peak.rss_mib, rss_mib(pid))
                peak.fds = max(peak.fds, open_fds(pid))
            stop.wait(interval)

    thread = threading.Thread(target=run, name="peak-usage", daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join(5)


# -- attacks ------------------------------------------------------------------------------------
def big_header(port: int, size: int, timeout: float = 60.0) -> tuple[Answer, int]:
    """One header of `size` bytes, sent while the server reads; returns the answer and bytes sent."""
    head = b"GET /healthcheck HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
    block = b"a" * 65536
    sent = 0
    t0 = time.monotonic()
    with connect(port, timeout=timeout) as sock:
        try:
            sock.sendall(head)
            while sent < size:
                sent += sock.send(block[: min(len(block), size - sent)])
            sock.sendall(b"\r\n\r\n")
        except (ConnectionResetError, BrokenPipeError, TimeoutError):
            pass
        return read_answer(sock, timeout, t0), sent


def many_headers(port: int, count: int) -> Answer:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(count))
    return exchange(port, b"GET /healthcheck HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n", timeout=30)


@contextlib.contextmanager
def held_connections(
    port: int, count: int, first_bytes: bytes = b"GET /healthcheck HTTP/1.1\r\nX-Slow: "
) -> Iterator[list[socket.socket]]:
    """`count` connections that each send the start of a request head and never finish it."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            try:
                s = connect(port, timeout=2)
                if first_bytes:
                    s.sendall(first_bytes)
                socks.append(s)
            except OSError:
                break
        yield socks
    finally:
        for s in socks:
            s.close()


def closed_by_server(socks: list[socket.socket]) -> int:
    """How many of `socks` the server has closed (EOF or reset readable now)."""
    closed = 0
    for s in socks:
        s.setblocking(False)
        try:
            data = s.recv(65536)
            closed += 1 if data == b"" or data.startswith(b"HTTP/") else 0
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    return closed


def slowloris(port: int, interval: float, limit_s: float) -> tuple[Answer, int]:
    """A request head sent one byte every `interval` s; returns when the server ends it (or at
    `limit_s`) with the answer and the bytes sent."""
    t0 = time.monotonic()
    payload = b"GET /healthcheck HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: " + b"a" * 10_000
    sent = 0
    with connect(port) as sock:
        while time.monotonic() - t0 < limit_s and sent < len(payload):
            try:
                sock.sendall(payload[sent : sent + 1])
            except (ConnectionResetError, BrokenPipeError):
                return Answer(b"", "reset", time.monotonic() - t0), sent
            sent += 1
            answer = read_answer(sock, interval, t0)
            if answer.end != "timeout" or answer.raw:
                return answer, sent
        return Answer(b"", "open", time.monotonic() - t0), sent


def silent(port: int, limit_s: float) -> Answer:
    """A connection that never sends a byte: when does the server close it?"""
    with connect(port) as sock:
        answer = read_answer(sock, limit_s)
        return Answer(answer.raw, "open" if answer.end == "timeout" else answer.end, answer.seconds)


def slow_body(port: int, declared: int, interval: float, limit_s: float) -> Answer:
    """A complete head announcing `declared` body bytes, then one byte every `interval` s."""
    t0 = time.monotonic()
    with connect(port) as sock:
        sock.sendall(
            request_bytes(
                "POST",
                "/generate",
                headers={"Content-Type": "application/json", "Content-Length": str(declared)},
            )
        )
        for _ in range(declared):
            if time.monotonic() - t0 > limit_s:
                break
            try:
                sock.sendall(b" ")
            except (ConnectionResetError, BrokenPipeError):
                return Answer(b"", "reset", time.monotonic() - t0)
            answer = read_answer(sock, interval, t0)
            if answer.end != "timeout" or answer.raw:
                return answer
        return Answer(b"", "open", time.monotonic() - t0)


def upload_after_413(
    port: int, close: bool, upload_bytes: int, limit_s: float, polite: bool
) -> tuple[Answer, int]:
    """A chunked upload far over the body limit, sent as fast as the server takes it. A `polite`
    client stops sending once it has a complete answer (as curl and httpx do); an impolite one
    sends on. Returns the answer and how many bytes the server took before it stopped reading."""
    headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    if close:
        headers["Connection"] = "close"
    chunk = b"%x\r\n%s\r\n" % (65536, b"a" * 65536)
    sent = 0
    got = bytearray()
    t0 = time.monotonic()
    with connect(port, timeout=1.0) as sock:
        sock.sendall(request_bytes("POST", "/generate", headers=headers))
        while sent < upload_bytes and time.monotonic() - t0 < limit_s:
            try:
                sent += sock.send(chunk)
            except TimeoutError:
                break  # the server stopped reading
            except (ConnectionResetError, BrokenPipeError):
                return Answer(bytes(got), "reset", time.monotonic() - t0), sent
            if polite:
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    got += sock.recv(65536)
                sock.settimeout(1.0)
                if Answer(bytes(got), "open", 0).complete:
                    break
        rest = read_answer(sock, 5.0, t0)
        return Answer(bytes(got) + rest.raw, rest.end, rest.seconds), sent


def big_prompts(
    base: str, clients: int, seconds: float, chat: bool, size: int = 1_000_000
) -> tuple[int, dict[int, int]]:
    """`clients` threads posting prompts of `size` characters back to back for `seconds`
    (each far over any prompt limit). Returns (requests sent, count by status)."""
    text = "hello " * (size // 6)
    body = (
        {"messages": [{"role": "user", "content": text}], "max_tokens": 4}
        if chat
        else {"prompt": text, "max_tokens": 4}
    )
    path = "/v1/chat/completions" if chat else "/generate"
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def run() -> None:
        with httpx.Client(base_url=base, timeout=60) as client:
            while time.monotonic() < deadline:
                try:
                    status = client.post(path, json=body).status_code
                except httpx.HTTPError:
                    status = 0
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=run, name=f"big-prompt-{i}") for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(statuses.values()), statuses
