"""The body guard: ASGI middleware between the connection guard and the routes.

A request with a body (POST, PUT, PATCH) reaches a route only as a complete JSON upload that
arrived in time: its media type must be `application/json` (anything else gets 415, so a web
page cannot start generations from a visitor's browser with a form or `text/plain` post, which
browsers send without a CORS preflight), its size at most `max_body_bytes` (413, judged on
`Content-Length` before reading, and while reading), and the whole body must arrive within
`body_timeout_s` of the head (408). The route then reads the buffered body as usual.

An early 413/415 is answered with `Connection: close`, but the connection is not closed at once:
closing a socket with unread upload data makes the kernel reset it, and the client often loses the
answer. The rest of the upload is read and dropped for up to `linger_s` / `linger_bytes` first.

The guard also keeps redirects (FastAPI's slash redirect) from echoing the client's `Host`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference_app.server.errors import error_response
from inference_app.server.http_metrics import Reason
from inference_app.server.limits import HttpLimits

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
JSON_MEDIA_TYPE = "application/json"


class _Disconnected(Exception):
    pass


class _TooLarge(Exception):
    pass


def is_json(content_type: str) -> bool:
    """`application/json`, with or without parameters (`; charset=utf-8`), any letter case."""
    return content_type.split(";", 1)[0].strip().lower() == JSON_MEDIA_TYPE


class BodyGuard:
    def __init__(self, app: ASGIApp, limits: HttpLimits, record: Callable[[Reason], None]) -> None:
        self.app = app
        self.limits = limits
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _relative_redirects(send)
        if scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = self.limits.max_body_bytes
        content_type = headers.get("content-type")
        if content_type is None or not is_json(content_type):
            got = f"got {content_type!r}" if content_type is not None else "none was sent"
            await self._reject(
                scope,
                receive,
                send,
                "unsupported_media_type",
                415,
                f"Content-Type must be application/json ({got}); e.g. curl -H "
                "'Content-Type: application/json'.",
            )
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(
                scope,
                receive,
                send,
                "body_too_large",
                413,
                f"Request body of {declared} bytes exceeds the {limit}-byte limit (--max-body-bytes).",
            )
            return
        try:
            async with asyncio.timeout(self.limits.body_timeout_s):
                body = await _read_body(receive, limit)
        except TimeoutError:
            await self._reject(
                scope,
                receive,
                send,
                "body_timeout",
                408,
                f"The request body did not arrive within {self.limits.body_timeout_s:g}s (--body-timeout).",
                linger=False,
            )
            return
        except _TooLarge:
            await self._reject(
                scope,
                receive,
                send,
                "body_too_large",
                413,
                f"Request body exceeds the {limit}-byte limit (--max-body-bytes).",
            )
            return
        except _Disconnected:
            return
        await self.app(scope, _replay(body, receive), send)

    async def _reject(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        reason: Reason,
        status: int,
        message: str,
        linger: bool = True,
    ) -> None:
        self.record(reason)
        response = error_response(Request(scope), status, message)
        headers = MutableHeaders(raw=list(response.raw_headers))
        headers["connection"] = "close"
        await send({"type": "http.response.start", "status": status, "headers": headers.raw})
        await send({"type": "http.response.body", "body": response.body, "more_body": True})
        if linger:
            await self._drain(receive)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _drain(self, receive: Receive) -> None:
        """Read and drop what the client still uploads (it has the whole answer meanwhile)."""
        dropped = 0
        try:
            async with asyncio.timeout(self.limits.linger_s):
                while dropped <= self.limits.linger_bytes:
                    message = await receive()
                    if message["type"] != "http.request" or not message.get("more_body", False):
                        return
                    dropped += len(message.get("body", b""))
        except TimeoutError:
            return


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The buffered body as one message, then the server's own events (disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


def _relative_redirects(send: Send) -> Send:
    """`Location: http://<client's Host>/path` -> `/path` (a redirect never names a host we were told)."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start" and 300 <= message["status"] < 400:
            headers = MutableHeaders(scope=message)
            location = headers.get("location", "")
            scheme, sep, rest = location.partition("://")
            if sep and "/" not in scheme:
                path = rest[rest.find("/") :] if "/" in rest else "/"
                headers["location"] = "/" + path.lstrip("/")  # never "//host": that names a host too
        await send(message)

    return wrapped
