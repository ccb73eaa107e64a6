"""The connection guard: uvicorn's h11 protocol plus the limits uvicorn does not have.

First stop of every byte a client sends. uvicorn parses HTTP/1.1 with h11 here (not httptools):
h11 refuses HTTP/1.1 requests without `Host`, never sends chunked bodies to HTTP/1.0 clients and
bounds what it buffers. This subclass adds, per connection, before any request reaches the app:
- a cap on open connections: at the cap the oldest connection without a request in progress is
  closed to make room (an attacker's idle sockets never lock out the kubelet's probe), and only
  when every connection is busy is the new one answered 503 and closed;
- an idle timeout (no request yet, or between keep-alive requests) and a header timeout (first
  byte of a request head to its end: slowloris gets 408);
- a header size limit answered with 431 (h11's own limit would answer 400);
- h11's protocol errors answered in the one JSON error shape with `X-Request-Id`;
- half-close: a client that shuts its sending side after a complete request still gets the answer.
Every refusal is counted (`HttpMetrics`) and logged, at most once per `_LOG_EVERY_S` per reason.

A flood of connections is paid for per connection on the one event loop, ahead of the probes
queued behind it, so a connection that never completes a request head costs as little as it can:
its bytes are held here until the head's blank line arrives (h11 parses nothing before that
anyway), and closing it skips h11's end-of-connection bookkeeping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from http import HTTPStatus
from typing import Any, ClassVar

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from inference_app.orchestrator import new_request_id
from inference_app.server.http_metrics import HttpMetrics, Reason
from inference_app.server.limits import HttpLimits
from inference_app.server.protocol import ErrorResponse

log = logging.getLogger("inference_app.server")

_LOG_EVERY_S = 10.0
# h11's own buffer bound stays far above ours, so the 431 below always answers first.
H11_MAX_INCOMPLETE_EVENT = 1 << 20
# The blank line that ends a request head, as h11 finds it (it accepts bare LF line endings too).
_HEAD_END = re.compile(rb"\n\r?\n")


class _GuardedConnection(h11.Connection):
    """h11's connection, refusing a complete request head over `max_head` bytes (431) and
    remembering its last protocol error (uvicorn's handler drops it)."""

    def __init__(self, max_head: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=H11_MAX_INCOMPLETE_EVENT)
        self.max_head = max_head
        self.last_error: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            event = super().next_event()
            if isinstance(event, h11.Request):
                size = (
                    len(event.method)
                    + len(event.target)
                    + sum(len(name) + len(value) + 4 for name, value in event.headers.raw_items())
                )
                if size > self.max_head:
                    raise h11.RemoteProtocolError(
                        f"The request head exceeds {self.max_head} bytes (--max-header-bytes).", 431
                    )
            return event
        except h11.RemoteProtocolError as exc:
            self.last_error = exc
            raise


class _RateLimitedLog:
    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, reason: str, client: tuple[str, int] | None, message: str) -> None:
        now = time.monotonic()
        if now - self._last.get(reason, -_LOG_EVERY_S) < _LOG_EVERY_S:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        more = self._suppressed.pop(reason, 0)
        self._last[reason] = now
        peer = f"{client[0]}:{client[1]}" if client else "client"
        again = f" ({more} more like it since the last such line)" if more else ""
        log.warning("%s: %s%s", peer, message, again)


class ConnectionTable:
    """Open connections, oldest first; admits a new one by closing the oldest idle one at the cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: dict[GuardedH11Protocol, None] = {}

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, conn: GuardedH11Protocol) -> bool:
        if len(self._open) >= self.cap:
            victim = next((c for c in self._open if c.idle), None)
            if victim is None:
                return False
            victim.evict()
        self._open[conn] = None
        return True

    def remove(self, conn: GuardedH11Protocol) -> None:
        self._open.pop(conn, None)


def error_bytes(status: int, message: str, retry_after: int | None = None) -> bytes:
    """A complete `Connection: close` answer in the one error shape, for a connection with no request."""
    request_id = new_request_id()
    body = json.dumps(ErrorResponse.of(status, message, None, request_id).body()).encode()
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        f"x-request-id: {request_id}",
        "connection: close",
    ]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class GuardedH11Protocol(H11Protocol):
    """One connection. Class attributes are set by `guarded_protocol` for one server."""

    limits: ClassVar[HttpLimits]
    table: ClassVar[ConnectionTable]
    metrics: ClassVar[HttpMetrics]
    notes: ClassVar[_RateLimitedLog]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.conn = self._conn = _GuardedConnection(self.limits.max_header_bytes)
        self._deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # bytes of the request head being received (0: none started)
        self._head_tail = b""  # its last 3 bytes: the end of the head may straddle two reads
        self._head = bytearray()  # an unfinished first head, handed to h11 once its blank line arrives
        self._peer_closed = False
        self._done = False  # answered and closing: nothing more is read or written

    # -- state ------------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """No request in progress: waiting for the first one, or between keep-alive requests."""
        return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

    def _set_deadline(self, seconds: float, reason: Reason) -> None:
        self._clear_deadline()
        self._deadline = self.loop.call_later(seconds, self._expired, reason)

    def _clear_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _refuse(
        self,
        reason: Reason,
        status: int | None,
        message: str,
        retry_after: int | None = None,
        linger: bool = False,
    ) -> None:
        """Answer (if `status`) and close; count and log it.

        With `linger` (a client still sending, e.g. a slow request head) the write side closes
        first and what the client still sends is dropped for up to `limits.linger_s`: closing at
        once would answer its next bytes with a reset, which can destroy the unread answer."""
        self.metrics.record(reason)
        self.notes.warning(reason, self.client, message)
        self._clear_deadline()
        self._done = True
        transport = self.transport
        if transport.is_closing():
            return
        if status is not None:
            transport.write(error_bytes(status, message, retry_after))
        if linger and transport.can_write_eof():
            transport.write_eof()
            asyncio.get_running_loop().call_later(self.limits.linger_s, transport.close)
        else:
            transport.close()

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.table.admit(self):
            self._refuse(
                "connection_cap",
                503,
                f"Too many open connections ({self.table.cap}, "
                "--max-connections), all busy; try again shortly.",
                retry_after=1,
            )
            return
        self._set_deadline(self.limits.idle_timeout_s, "idle_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self._clear_deadline()
        self.table.remove(self)
        if self.cycle is None:  # no request ever began: nothing to finish, no h11 state worth keeping
            self.connections.discard(self)
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        if self.conn.their_state is h11.IDLE:
            if self._head_bytes == 0:
                self._set_deadline(self.limits.header_timeout_s, "header_timeout")  # a request head starts
            if self._head_too_large(data):
                return
            ends = _HEAD_END.search(data) or _HEAD_END.search(self._head_tail + data[:3])
            self._head_bytes += len(data)
            self._head_tail = data[-3:]
            if self.cycle is None and not ends:  # a first head, unfinished: h11 would only buffer it
                self._head += data
                return
            if self._head:
                data, self._head = bytes(self._head + data), bytearray()
        super().data_received(data)
        self._after_events()

    def _head_too_large(self, data: bytes) -> bool:
        """431 before h11 parses anything, when the head cannot end within the limit (parsing 10k
        headers in one chunk would hold the event loop for a while)."""
        room = self.limits.max_header_bytes - self._head_bytes
        if len(data) <= room:
            return False
        window = self._head_tail + data[: max(room, 0) + 4]
        if _HEAD_END.search(window):
            return False  # the head ends in time (what follows is a body or the next request)
        self._refuse(
            "header_too_large",
            431,
            f"The request head exceeds {self.limits.max_header_bytes} bytes (--max-header-bytes).",
        )
        return True

    def eof_received(self) -> bool | None:  # type: ignore[override]
        """Half-close: a complete request still gets its answer, then the connection closes."""
        if self.cycle is not None and not self.cycle.response_complete and self.conn.their_state is h11.DONE:
            self._peer_closed = True
            return True  # keep the transport open for writing
        return None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._peer_closed and not self.transport.is_closing():
            self.transport.close()
            return
        self._after_events()

    def shutdown(self) -> None:
        """Server shutdown: connections already answered and closing need nothing more (h11 may be
        in its error state, where uvicorn's close handshake would raise)."""
        if self._done or self.transport.is_closing():
            return
        super().shutdown()

    def send_400_response(self, msg: str) -> None:
        error = self._conn.last_error
        status = error.error_status_hint if error is not None else 400
        detail = str(error) if error is not None and str(error) else msg
        if status == 431:
            self._refuse("header_too_large", 431, detail)
        else:
            self._refuse("malformed", status, f"Malformed HTTP request: {detail}")

    # -- guards -----------------------------------------------------------------------------
    def _after_events(self) -> None:
        """After h11 consumed what arrived: a complete head stops the header clock."""
        if self._done or self.transport.is_closing():
            return
        if self.conn.their_state is not h11.IDLE and self._head_bytes:
            self._head_bytes = 0
            self._head_tail = b""
            self._clear_deadline()  # the body's time is the body guard's

    def _expired(self, reason: Reason) -> None:
        self._deadline = None
        if self._done or not self.idle:
            return
        if reason == "header_timeout" and self._head_bytes:
            self._refuse(
                reason,
                408,
                f"The request head did not arrive within {self.limits.header_timeout_s:g}s "
                "(--header-timeout).",
                linger=True,
            )
        else:
            self._refuse("idle_timeout", None, "closed an idle connection (--idle-timeout)")

    def evict(self) -> None:
        """Make room at the cap (called on the oldest idle connection)."""
        self._refuse(
            "evicted", None, f"closed the oldest idle connection: {self.table.cap} open (--max-connections)"
        )
        self.table.remove(self)


def guarded_protocol(limits: HttpLimits, metrics: HttpMetrics) -> type[GuardedH11Protocol]:
    """A protocol class bound to one server's limits, connection table and metrics."""
    table = ConnectionTable(limits.max_connections)
    metrics.bind_open_connections(lambda: len(table))
    attrs = {"limits": limits, "table": table, "metrics": metrics, "notes": _RateLimitedLog()}
    return type("GuardedH11Protocol", (GuardedH11Protocol,), attrs)
