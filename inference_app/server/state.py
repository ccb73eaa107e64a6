"""The serving process's life cycle: loading -> warming_up -> ready -> draining (or failed).

Sits between the HTTP layer and the orchestrator: `create_app` makes one `ServingState`, routes
reach it with `serving_state(request)`, and the serving logic admits requests through `submit`.
Loading and warm-up run on a background thread so the port is open (and `/healthcheck` answers
503) while the model loads; only a warmed-up engine turns health green.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Literal

from fastapi import Request

from inference_app.engine.api import Engine
from inference_app.orchestrator import (
    GenerationRequest,
    Job,
    Orchestrator,
    RequestRejected,
    ServingMetrics,
    Sink,
    Unavailable,
)
from inference_app.server.admission import PromptLimits, QueueBudget, Tokenization
from inference_app.server.options import ServerOptions

log = logging.getLogger("inference_app.server")

Phase = Literal["loading", "warming_up", "ready", "draining", "stopped", "failed"]


def serving_state(request: Request) -> ServingState:
    """The state of the app serving `request` (set by `create_app`)."""
    state: ServingState = request.app.state.serving
    return state


class ServingState:
    """Owns the engine and orchestrator of one app; routes reach it through `app.state.serving`."""

    def __init__(self, options: ServerOptions, engine_factory: Callable[[], Engine]) -> None:
        self.options = options
        self.metrics = ServingMetrics()
        self.started_at = time.time()
        self._factory = engine_factory
        self._phase: Phase = "loading"
        self._error: str | None = None
        self.engine: Engine | None = None
        self.prompt_limits: PromptLimits | None = None  # set with the engine
        self.orchestrator: Orchestrator | None = None
        self.tokenization = Tokenization()
        self.queue_budget = QueueBudget(options.max_queue_wait_s)
        self._thread: threading.Thread | None = None

    @property
    def phase(self) -> Phase:
        if self.orchestrator is not None and self.orchestrator.failure is not None:
            return "failed"
        return self._phase

    @property
    def error(self) -> str | None:
        if self.orchestrator is not None and self.orchestrator.failure is not None:
            return self.orchestrator.failure
        return self._error

    @property
    def ready(self) -> bool:
        return self.phase == "ready" and self.orchestrator is not None and self.orchestrator.ready

    def start(self) -> None:
        """Load and warm up in the background (the HTTP port opens meanwhile)."""
        self._thread = threading.Thread(target=self._load, name="loader", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """Block until ready or failed (for in-process tests and the batch runner)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready or self.phase in ("failed", "stopped"):
                return self.ready
            time.sleep(0.01)
        return self.ready

    def _load(self) -> None:
        try:
            t0 = time.monotonic()
            log.info("Loading the engine ...")
            engine = self._factory()
            self.prompt_limits = PromptLimits(engine.tokenizer, engine.max_prefill_length)
            self.engine = engine
            log.info("Engine loaded in %.1fs (%s mode).", time.monotonic() - t0, engine.settings.mode)
            orchestrator = Orchestrator(engine, max_queue=self.options.max_queue, metrics=self.metrics)
            if self._phase != "loading":
                return  # drained or stopped while loading
            self._phase = "warming_up"
            self.orchestrator = orchestrator
            orchestrator.start(warmup=self.options.warmup)
            if self._phase == "warming_up":
                self._phase = "ready"
                log.info("Ready: /healthcheck is green.")
            else:
                orchestrator.begin_drain()
        except Exception as exc:
            log.exception("Start-up failed")
            # The message may name files and directories: it goes to the log, not to clients.
            self._error = f"start-up failed: {type(exc).__name__} (details in the server log)"
            self._phase = "failed"

    @contextlib.contextmanager
    def counting_refusals(self) -> Iterator[None]:
        """Count what is turned away here, before the orchestrator (which counts its own)."""
        try:
            yield
        except RequestRejected as exc:
            self.metrics.requests.labels(outcome=exc.outcome).inc()
            raise

    def loaded(self) -> tuple[Engine, PromptLimits]:
        """The engine and its prompt limits, or `Unavailable` (503) while loading or after a failed
        start-up. Callers count it (`counting_refusals`)."""
        engine, limits = self.engine, self.prompt_limits
        if engine is None or limits is None:
            detail = f": {self.error}" if self.error else ""
            raise Unavailable(f"The model is not loaded yet (phase: {self.phase}{detail}).", retry_after=5)
        return engine, limits

    def waiting_for_slot(self) -> int:
        """Admitted requests that wait for a running one to end (0 before the orchestrator starts)."""
        return self.orchestrator.waiting_for_slot() if self.orchestrator is not None else 0

    def submit(self, request: GenerationRequest, sink: Sink) -> Job:
        orchestrator = self.orchestrator
        if orchestrator is not None and orchestrator.failure is not None:
            return orchestrator.submit(request, sink)  # raises Unavailable naming the failure
        with self.counting_refusals():
            if orchestrator is None or self.phase != "ready":
                detail = f": {self.error}" if self.error else ""
                raise Unavailable(f"The server is not ready (phase: {self.phase}{detail}).", retry_after=5)
            self.queue_budget.check(orchestrator.waiting_for_slot(arriving=1))
        return orchestrator.submit(request, sink)

    def begin_drain(self) -> None:
        """SIGTERM: health turns 503 and nothing new is admitted; in-flight requests go on."""
        if self._phase in ("loading", "warming_up", "ready"):
            self._phase = "draining"
        if self.orchestrator is not None:
            self.orchestrator.begin_drain()

    def wait_idle(self, timeout: float) -> bool:
        return self.orchestrator is None or self.orchestrator.wait_idle(timeout)

    def abort_in_flight(self, message: str) -> None:
        if self.orchestrator is not None:
            self.orchestrator.abort_in_flight(message, 503)

    def stop(self) -> None:
        if self._phase != "failed":
            self._phase = "stopped"
        if self.orchestrator is not None:
            self.orchestrator.stop()
        self.tokenization.close()
