"""`python -m inference_app serve`: the HTTP server (uvicorn) with a SIGTERM drain.

The outermost layer of serving: flags -> `ServerOptions` + `EngineSettings` (`engine/settings.py`)
-> `create_app` (`app.py`) with an engine factory that loads the model in the background -> uvicorn.

SIGTERM: `/healthcheck` turns 503 and new requests get 503 at once, in-flight requests finish (up
to `--drain-timeout` seconds; the rest fail with 503), then the process exits 0. A second SIGTERM
or a SIGINT (Ctrl-C) stops at once.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import cast

import uvicorn

from inference_app import pathways
from inference_app.engine.api import Engine
from inference_app.engine.settings import (
    EngineSettings,
    SettingsError,
    add_engine_arguments,
    positive_int,
    settings_from_args,
)
from inference_app.model.catalog import CATALOG
from inference_app.server.app import create_app
from inference_app.server.options import ServerOptions
from inference_app.server.state import ServingState

log = logging.getLogger("inference_app.server")

LOG_FORMAT = "%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s"


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("HTTP")
    g.add_argument("--host", default=ServerOptions.host, help="bind address (default %(default)s)")
    g.add_argument("--port", type=int, default=ServerOptions.port, help="port (default %(default)s)")
    g.add_argument(
        "--max-queue",
        type=positive_int,
        default=ServerOptions.max_queue,
        help="admitted requests waiting for prefill before answering 429 (default %(default)s)",
    )
    g.add_argument(
        "--drain-timeout",
        type=float,
        default=ServerOptions.drain_timeout_s,
        help="SIGTERM: seconds in-flight requests may take to finish (default %(default)s)",
    )
    g.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip compiling every prefill bucket before /healthcheck turns 200 (first requests compile)",
    )
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    add_engine_arguments(p)
    p.add_argument_group("platform").add_argument(
        "--pathways",
        action="store_true",
        help="run JAX through the Pathways proxy "
        "(needs JAX_PLATFORMS=proxy, JAX_BACKEND_TARGET, pathwaysutils)",
    )

    t = p.add_argument_group("testing")
    t.add_argument(
        "--inject-fault",
        metavar="STAGE:MARKER",
        default=None,
        help="TEST ONLY: raise in STAGE (prefill|insert|generate) for prompts containing MARKER",
    )


def server_options(args: argparse.Namespace, settings: EngineSettings) -> ServerOptions:
    # A catalog model is served under its Hugging Face id (what tools look a tokenizer up by), with
    # the catalog name as an alias; a model path under its last path component.
    aliases: tuple[str, ...] = ()
    if settings.model is not None:
        name, aliases = CATALOG[settings.model].hf_id, (settings.model,)
    else:
        name = (settings.model_path or "model").rstrip("/").rsplit("/", 1)[-1]
    return ServerOptions(
        host=args.host,
        port=args.port,
        model_name=name,
        model_aliases=aliases,
        max_queue=args.max_queue,
        drain_timeout_s=args.drain_timeout,
        warmup=not args.no_warmup,
    )


def engine_factory(settings: EngineSettings, inject_fault: str | None) -> Callable[[], Engine]:
    wrap: Callable[[Engine], Engine] | None = None
    if inject_fault is not None:
        try:  # test doubles are not part of the product image
            from inference_app.testing.faults import FaultInjectingEngine, parse_fault_spec
        except ImportError:
            raise SystemExit(
                "serve: --inject-fault is a test-only flag and needs inference_app.testing, which this "
                "installation leaves out (the product image does); run it from a source checkout."
            ) from None
        try:
            stage, marker = parse_fault_spec(inject_fault)
        except ValueError as exc:
            raise SystemExit(f"serve: {exc}") from None

        def wrap(engine: Engine) -> Engine:
            log.warning("TEST ONLY: injecting faults in %s for prompts containing %r", stage, marker)
            return FaultInjectingEngine(engine, stage, marker)

    def build() -> Engine:
        from inference_app.engine import load_engine

        engine = cast(Engine, load_engine(settings))  # JaxEngine types its tokenizer concretely
        return engine if wrap is None else wrap(engine)

    return build


class QuietProbes(logging.Filter):
    """Drop access-log lines of /healthcheck and /metrics polls that say nothing new (probes poll
    every second): 200s, and the 503s while loading or draining, which the phase logs announce."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            path, status = str(args[2]), args[4]
            return not (path in ("/healthcheck", "/metrics") and status in (200, 503))
        return True


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM drains (health 503, finish in flight) and exits 0."""

    def __init__(self, config: uvicorn.Config, state: ServingState) -> None:
        super().__init__(config)
        self.state = state
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self._draining:
            self._draining = True
            threading.Thread(target=self._drain, name="drain", daemon=True).start()
            return
        super().handle_exit(sig, frame)

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


def run_server(options: ServerOptions, factory: Callable[[], Engine]) -> int:
    """Serve until SIGTERM (drained, exit 0) or SIGINT."""
    app = create_app(options, engine_factory=factory)
    logging.getLogger("uvicorn.access").addFilter(QuietProbes())
    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        log_config=None,  # our logging format for uvicorn's loggers too
        timeout_graceful_shutdown=5,
        lifespan="on",
    )
    server = DrainingServer(config, app.state.serving)
    server.run()
    return 0


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        raise SystemExit(f"serve: {exc}") from None
    try:
        pathways.initialize(args.pathways)  # before anything touches JAX
    except pathways.PathwaysConfigError as exc:
        raise SystemExit(f"serve: {exc}") from None
    options = server_options(args, settings)
    log.info(
        "Serving %s (%s mode; slots %s, prompts <= %s, sequences <= %s; auto: sized from memory) on http://%s:%d",
        options.model_name, settings.mode, settings.max_slots or "auto",
        settings.max_prefill_length or "auto", settings.max_target_length or "auto",
        options.host, options.port,
    )
    return run_server(options, engine_factory(settings, args.inject_fault))
