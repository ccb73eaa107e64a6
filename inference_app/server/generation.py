"""The serving logic shared by every generation endpoint: orchestrator events into asyncio.

The orchestrator calls a request's sink from its own threads; `EventChannel` hops each event onto
the event loop. `Generation` is one admitted request as a route sees it: an async stream of events,
cancelled as soon as the client disconnects (a watcher task reads the ASGI `http.disconnect`), so
its decode slot is freed within one step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from fastapi import Request

from inference_app.orchestrator import Event, Failed, Finished, GenerationRequest, Job, TextDelta
from inference_app.server.errors import ApiError
from inference_app.server.state import ServingState

log = logging.getLogger("inference_app.server")


class EventChannel:
    """A thread-safe `Sink` whose events are awaited on the event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Event] = asyncio.Queue()

    def __call__(self, event: Event) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    async def get(self) -> Event:
        return await self._queue.get()


class Generation:
    """An admitted request: iterate `events()`, always `close()` (cancels if unfinished)."""

    def __init__(self, state: ServingState, request: GenerationRequest, http_request: Request) -> None:
        self.request = request
        self._channel = EventChannel()
        self.job: Job = state.submit(request, self._channel)  # raises RequestRejected (4xx/503)
        self._http_request = http_request
        self._watcher = asyncio.create_task(self._watch_disconnect())
        self._pending: list[Event] = []
        self._t0 = time.monotonic()

    async def _watch_disconnect(self) -> None:
        while not self.job.finished:
            message = await self._http_request.receive()
            if message["type"] == "http.disconnect":
                if self.job.cancel():
                    log.info("[%s] client disconnected; request cancelled, slot freed", self.request.request_id)
                return

    async def first(self) -> Event:
        """Wait for the first event without consuming it (streams check it before sending headers)."""
        if not self._pending:
            self._pending.append(await self._channel.get())
        return self._pending[0]

    async def events(self) -> AsyncIterator[Event]:
        """Events until (and including) the final `Finished` or `Failed`."""
        while True:
            event = self._pending.pop(0) if self._pending else await self._channel.get()
            yield event
            if isinstance(event, Finished | Failed):
                return

    async def collect(self) -> tuple[str, Finished]:
        """Non-streaming: the whole text; a failure becomes its HTTP error."""
        parts: list[str] = []
        async for event in self.events():
            if isinstance(event, TextDelta):
                parts.append(event.text)
            elif isinstance(event, Failed):
                raise ApiError(event.status, event.message)
            else:
                return "".join(parts), event
        raise ApiError(500, "The request ended without a result.")

    def close(self) -> None:
        self._watcher.cancel()
        if self.job.cancel():
            log.info("[%s] stream closed early; request cancelled", self.request.request_id)
        log.info(
            "[%s] done: %s, %d prompt + %d generated tokens in %.2fs",
            self.request.request_id,
            self.job.outcome,
            len(self.request.prompt_ids),
            self.job.delivered,
            time.monotonic() - self._t0,
        )
