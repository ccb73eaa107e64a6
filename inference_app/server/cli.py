"""`python -m inference_app serve`: the HTTP server (uvicorn) with a SIGTERM drain.

SIGTERM: `/healthcheck` turns 503 and new requests get 503 at once, in-flight requests finish (up
to `--drain-timeout` seconds; the rest fail with 503), then the process exits 0. A second SIGTERM
or a SIGINT (Ctrl-C) stops at once.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import typing
from collections.abc import Callable
from types import FrameType
from typing import cast

import uvicorn

from inference_app import pathways
from inference_app.engine.api import Engine, EngineSettings, Mode
from inference_app.engine.kv_budget import parse_size
from inference_app.server.app import create_app
from inference_app.server.options import ServerOptions
from inference_app.server.state import ServingState

log = logging.getLogger("inference_app.server")

LOG_FORMAT = "%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s"
_DEFAULT = EngineSettings()
_HINTS = typing.get_type_hints(EngineSettings)
DTYPES: tuple[str, ...] = typing.get_args(_HINTS["weight_dtype"])
KV_DTYPES: tuple[str, ...] = typing.get_args(_HINTS["kv_dtype"])
MODES: tuple[str, ...] = typing.get_args(Mode)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _parallelism(text: str) -> int:
    value = int(text)
    if value < 1 and value != -1:
        raise argparse.ArgumentTypeError(f"must be >= 1, or -1 to fill the remaining devices; got {value}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("HTTP")
    g.add_argument("--host", default=ServerOptions.host, help="bind address (default %(default)s)")
    g.add_argument("--port", type=int, default=ServerOptions.port, help="port (default %(default)s)")
    g.add_argument("--max-queue", type=_positive, default=ServerOptions.max_queue,
                   help="admitted requests waiting for prefill before answering 429 (default %(default)s)")
    g.add_argument("--drain-timeout", type=float, default=ServerOptions.drain_timeout_s,
                   help="SIGTERM: seconds in-flight requests may take to finish (default %(default)s)")
    g.add_argument("--no-warmup", action="store_true",
                   help="skip compiling every prefill bucket before /healthcheck turns 200 (first requests compile)")
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    m = p.add_argument_group("model and engine")
    src = m.add_mutually_exclusive_group()
    src.add_argument("--model", default=None,
                     help=f"catalog model name (default {_DEFAULT.model}: the embedded SmolLM2-135M-Instruct)")
    src.add_argument("--model-path", default=None, help="GGUF file, Hugging Face directory, or gs:// URL of either")
    m.add_argument("--mode", choices=MODES, default=_DEFAULT.mode,
                   help="interleaved: one device group prefills and decodes; disaggregated: devices split "
                   "in two halves, prefill on one and decode on the other (default %(default)s)")
    m.add_argument("--max-slots", type=_positive, default=_DEFAULT.max_slots,
                   help="requests generated concurrently (default: sized from the KV cache memory)")
    m.add_argument("--max-prefill-length", type=_positive, default=_DEFAULT.max_prefill_length,
                   help="longest prompt in tokens; longer prompts get 400 (default: the context - 1)")
    m.add_argument("--max-target-length", type=_positive, default=_DEFAULT.max_target_length,
                   help="prompt + generated tokens of one request (default: the model's context)")
    m.add_argument("--kv-cache-memory", type=_size, default=_DEFAULT.kv_cache_memory,
                   help="memory for the KV cache, e.g. 4GiB (default: a share of free memory)")
    m.add_argument("--kv-block-size", type=_positive, default=_DEFAULT.kv_block_size,
                   help="tokens per block of the paged KV cache (default %(default)s)")
    m.add_argument("--no-prefix-caching", action="store_true",
                   help="do not reuse the KV blocks of prompt prefixes shared between requests")
    m.add_argument("--max-prefill-batch", type=_positive, default=_DEFAULT.max_prefill_batch,
                   help="separate prefill stage: prompts of one length bucket prefilled together (short "
                   "prompts only; each batch shape is compiled during warm-up; default %(default)s)")
    m.add_argument("--no-chunked-prefill", action="store_true",
                   help="CPU: use the separate prefill stage instead of prefilling prompts in chunks "
                   "inside the decode steps (chunked prefill needs the native CPU kernels)")
    m.add_argument("--max-step-tokens", type=_positive, default=_DEFAULT.max_step_tokens,
                   help="chunked prefill: token rows per step, decode rows + prompt chunks (default %(default)s)")
    m.add_argument("--weight-dtype", choices=DTYPES, default=_DEFAULT.weight_dtype,
                   help="auto: float32 on CPU, bfloat16 on TPU/GPU (default %(default)s)")
    m.add_argument("--kv-dtype", choices=KV_DTYPES, default=_DEFAULT.kv_dtype, help="KV cache dtype (default %(default)s)")
    m.add_argument("--ici-fsdp-parallelism", type=_parallelism, default=_DEFAULT.ici_fsdp_parallelism)
    m.add_argument("--ici-autoregressive-parallelism", type=_parallelism,
                   default=_DEFAULT.ici_autoregressive_parallelism)
    m.add_argument("--ici-tensor-parallelism", type=_parallelism, default=_DEFAULT.ici_tensor_parallelism,
                   help="mesh axes fsdp x autoregressive x tensor; -1 fills the remaining devices")
    m.add_argument("--compilation-cache-dir", default=_DEFAULT.compilation_cache_dir,
                   help="persistent XLA compilation cache ('' disables; default %(default)s)")
    m.add_argument("--pathways", action="store_true",
                   help="run JAX through the Pathways proxy (needs JAX_PLATFORMS=proxy, JAX_BACKEND_TARGET, pathwaysutils)")

    t = p.add_argument_group("testing")
    t.add_argument("--inject-fault", metavar="STAGE:MARKER", default=None,
                   help="TEST ONLY: raise in STAGE (prefill|insert|generate) for prompts containing MARKER")


def engine_settings(args: argparse.Namespace) -> EngineSettings:
    """Flags -> EngineSettings, with errors that name the flag."""
    if (
        args.max_prefill_length is not None
        and args.max_target_length is not None
        and args.max_prefill_length >= args.max_target_length
    ):
        raise SystemExit(
            f"serve: --max-prefill-length ({args.max_prefill_length}) must be smaller than "
            f"--max-target-length ({args.max_target_length}) to leave room for generated tokens."
        )
    model = None if args.model_path else (args.model or _DEFAULT.model)
    return EngineSettings(
        model=model,
        model_path=args.model_path,
        mode=args.mode,
        max_slots=args.max_slots,
        max_prefill_length=args.max_prefill_length,
        max_target_length=args.max_target_length,
        kv_cache_memory=args.kv_cache_memory,
        kv_block_size=args.kv_block_size,
        prefix_caching=not args.no_prefix_caching,
        max_prefill_batch=args.max_prefill_batch,
        chunked_prefill=not args.no_chunked_prefill,
        max_step_tokens=args.max_step_tokens,
        weight_dtype=args.weight_dtype,
        kv_dtype=args.kv_dtype,
        ici_fsdp_parallelism=args.ici_fsdp_parallelism,
        ici_autoregressive_parallelism=args.ici_autoregressive_parallelism,
        ici_tensor_parallelism=args.ici_tensor_parallelism,
        compilation_cache_dir=args.compilation_cache_dir or None,
    )


def server_options(args: argparse.Namespace, settings: EngineSettings) -> ServerOptions:
    name = settings.model or (settings.model_path or "model").rstrip("/").rsplit("/", 1)[-1]
    return ServerOptions(
        host=args.host,
        port=args.port,
        model_name=name,
        max_queue=args.max_queue,
        drain_timeout_s=args.drain_timeout,
        warmup=not args.no_warmup,
    )


def engine_factory(settings: EngineSettings, inject_fault: str | None) -> Callable[[], Engine]:
    fault = None
    if inject_fault is not None:
        from inference_app.orchestrator.faults import parse_fault_spec

        try:
            fault = parse_fault_spec(inject_fault)
        except ValueError as exc:
            raise SystemExit(f"serve: {exc}") from None

    def build() -> Engine:
        from inference_app.engine import load_engine

        engine = cast(Engine, load_engine(settings))  # JaxEngine types its tokenizer concretely
        if fault is not None:
            from inference_app.orchestrator.faults import FaultInjectingEngine

            log.warning("TEST ONLY: injecting faults in %s for prompts containing %r", *fault)
            engine = FaultInjectingEngine(engine, *fault)
        return engine

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
            self.state.abort_in_flight(f"The server is shutting down (drain deadline of {timeout:g}s passed).")
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
    settings = engine_settings(args)
    try:
        pathways.initialize(args.pathways)  # before anything touches JAX
    except pathways.PathwaysConfigError as exc:
        raise SystemExit(f"serve: {exc}") from None
    options = server_options(args, settings)
    log.info(
        "Serving %s (%s mode, slots %s, prefill <= %s, target %s; auto: sized from memory) on http://%s:%d",
        options.model_name, settings.mode, settings.max_slots or "auto", settings.max_prefill_length or "auto",
        settings.max_target_length or "auto", options.host, options.port,
    )
    return run_server(options, engine_factory(settings, args.inject_fault))
