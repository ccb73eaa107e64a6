"""`python -m inference_app serve`: flags -> engine settings and server options, then `run_server`.

The outermost layer of serving: flags -> `ServerOptions` (with the front door's `HttpLimits`) +
`EngineSettings` (`engine/settings.py`) -> `run_server` (`http_server.py`: `create_app` with an
engine factory that loads the model in the background, served by uvicorn behind the connection
guard, with the SIGTERM drain).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import cast

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
from inference_app.server.http_server import run_server
from inference_app.server.limits import add_http_limit_arguments, http_limits_from_args, non_negative_float
from inference_app.server.options import ServerOptions

__all__ = ["LOG_FORMAT", "ServerOptions", "add_arguments", "main", "run_server"]

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
        "--max-queue-wait",
        type=non_negative_float,
        default=ServerOptions.max_queue_wait_s,
        help="seconds a new request may expect to wait for a slot (requests ahead of it without "
        "a free slot over the completion rate while saturated); longer: 503 with Retry-After at "
        "once; 0: no budget (default %(default)s)",
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
    g.add_argument(
        "--docs",
        action="store_true",
        help="serve the interactive API page at /docs (off by default: it loads scripts from a CDN "
        "into the visitor's browser; the schema stays at /openapi.json)",
    )
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add_http_limit_arguments(p)

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
        max_queue_wait_s=args.max_queue_wait,
        drain_timeout_s=args.drain_timeout,
        warmup=not args.no_warmup,
        docs=args.docs,
        limits=http_limits_from_args(args),
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
        options.model_name,
        settings.mode,
        settings.max_slots or "auto",
        settings.max_prefill_length or "auto",
        settings.max_target_length or "auto",
        options.host,
        options.port,
    )
    return run_server(options, engine_factory(settings, args.inject_fault))
