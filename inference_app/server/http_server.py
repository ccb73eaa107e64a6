"""The HTTP server process: uvicorn configured with the front door's limits, and the SIGTERM drain.

`run_server` is what `serve` (and the tests' fake-engine servers) run: the app from `create_app`,
served by uvicorn over its h11 protocol wrapped in the connection guard (`connections.py`), with
the cap on open connections fitted to the file descriptor limit.

SIGTERM: `/healthcheck` turns 503 and new requests get 503 at once, in-flight requests finish (up
to `--drain-timeout` seconds; the rest fail with 503), then the process exits 0. A second SIGTERM
ends the drain at once, but every answer still ends cleanly (a JSON 503, or a stream's final error
line) before the process exits 0. SIGINT (Ctrl-C) stops at once.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn

from inference_app.engine.api import Engine
from inference_app.server.app import create_app
from inference_app.server.connections import guarded_protocol
from inference_app.server.http_metrics import HttpMetrics
from inference_app.server.limits import fit_connection_cap
from inference_app.server.options import ServerOptions
from inference_app.server.state import ServingState

log = logging.getLogger("inference_app.server")


class QuietProbes(logging.Filter):
    """Drop access-log lines of /healthcheck and /metrics polls that say nothing new (probes poll
    every second): 200s, and the 503s while loading or draining, which the phase logs announce."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            path, status = str(args[2]), args[4]
            return not (path in ("/healthcheck", "/metrics") and status in (200, 503))
        return True


class QuietParserErrors(logging.Filter):
    """uvicorn logs every unparsable request; the connection guard logs them rate-limited instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Invalid HTTP request received."


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM drains (health 503, finish in flight) and exits 0."""

    def __init__(self, config: uvicorn.Config, state: ServingState) -> None:
        super().__init__(config)
        self.state = state
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Off the signal handler: it interrupts the loop thread, which may hold the orchestrator's lock.
        if sig == signal.SIGTERM and not self._draining:
            self._draining = True
            threading.Thread(target=self._drain, name="drain", daemon=True).start()
            return
        if sig == signal.SIGTERM:
            threading.Thread(target=self._end_drain, name="drain-now", daemon=True).start()
            return
        super().handle_exit(sig, frame)

    def _end_drain(self) -> None:
        """A second SIGTERM: fail what is in flight now, each answer still complete (a JSON 503, or a
        stream's final error line), and the drain ends as soon as they are written."""
        log.warning("Second SIGTERM: ending the drain now; requests in flight end with 503.")
        self.state.abort_in_flight("The server is shutting down (a second SIGTERM ended the drain).")

    def _drain(self) -> None:
        timeout = self.state.options.drain_timeout_s
        log.info("SIGTERM: draining (health 503, no new requests, up to %.0fs for in-flight ones).", timeout)
        self.state.begin_drain()
        if self.state.wait_idle(timeout):
            log.info("Drained: no request in flight; shutting down.")
        else:
            log.warning("Drain deadline of %.0fs passed; the remaining requests fail with 503.", timeout)
            self.state.abort_in_flight(
                f"The server is shutting down (drain deadline of {timeout:g}s passed)."
            )
        self.should_exit = True


def uvicorn_config(options: ServerOptions, app: object, metrics: HttpMetrics) -> uvicorn.Config:
    """uvicorn with the front door's limits: its h11 protocol behind the connection guard."""
    limits = dataclasses.replace(
        options.limits, max_connections=fit_connection_cap(options.limits.max_connections)
    )
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=options.host,
        port=options.port,
        http=guarded_protocol(limits, metrics),
        timeout_keep_alive=limits.idle_timeout_s,  # type: ignore[arg-type]  # uvicorn takes seconds as a float
        log_config=None,  # our logging format for uvicorn's loggers too
        timeout_graceful_shutdown=5,
        lifespan="on",
    )


def run_server(options: ServerOptions, factory: Callable[[], Engine]) -> int:
    """Serve until SIGTERM (drained, exit 0) or SIGINT."""
    app = create_app(options, engine_factory=factory)
    logging.getLogger("uvicorn.access").addFilter(QuietProbes())
    logging.getLogger("uvicorn.error").addFilter(QuietParserErrors())
    server = DrainingServer(uvicorn_config(options, app, app.state.http_metrics), app.state.serving)
    server.run()
    return 0
