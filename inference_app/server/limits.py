"""Limits of the HTTP front door: sizes, timeouts and the connection cap, with their flags.

They sit in front of everything else a request meets: the connection guard (`connections.py`)
applies the transport-level ones before a request exists (header size and time, idle time, the
cap on open connections) and the body guard (`body_guard.py`) the request-level ones before a
route runs (media type, body size and time). Each has a `serve` flag; docs/serving.md lists them.
"""

from __future__ import annotations

import argparse
import logging
import resource
from dataclasses import dataclass, fields

from inference_app.engine.settings import positive_int

log = logging.getLogger("inference_app.server")

# File descriptors kept free beside the connection cap: the listening socket, model and
# compilation-cache files, gcsfs sockets, pipes and the log file.
FD_RESERVE = 256


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = 32 * 1024  # request line + headers; larger: 431, connection closed
    header_timeout_s: float = 10.0  # first byte of a request head -> its end; slower: 408, closed
    idle_timeout_s: float = 5.0  # a connection with no request in progress is closed after this
    body_timeout_s: float = 30.0  # end of the head -> end of the body; slower: 408, closed
    max_body_bytes: int = 1 << 20  # larger: 413 (checked on Content-Length and while reading)
    max_connections: int = 1024  # open connections; beyond: the oldest idle one is closed, else 503
    linger_s: float = 2.0  # after an early 413/415/408, how long what the client still sends is dropped
    linger_bytes: int = 16 << 20  # ... and at most this much of it (more than loopback socket buffers hold)

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) <= 0:
                raise ValueError(f"HttpLimits.{f.name} must be > 0, got {getattr(self, f.name)}")


def positive_float(text: str) -> float:
    """argparse type for sizes of time: a float > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type for a budget where 0 turns it off."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_http_limit_arguments(p: argparse.ArgumentParser) -> None:
    d = HttpLimits()
    g = p.add_argument_group("HTTP limits (see docs/serving.md#limits)")
    g.add_argument(
        "--max-header-bytes",
        type=positive_int,
        default=d.max_header_bytes,
        help="request line + headers; larger: 431 (default %(default)s)",
    )
    g.add_argument(
        "--header-timeout",
        type=positive_float,
        default=d.header_timeout_s,
        help="seconds from the first byte of a request head to its end; slower: 408 (default %(default)s)",
    )
    g.add_argument(
        "--idle-timeout",
        type=positive_float,
        default=d.idle_timeout_s,
        help="seconds a connection may sit without a request before it is closed (default %(default)s)",
    )
    g.add_argument(
        "--body-timeout",
        type=positive_float,
        default=d.body_timeout_s,
        help="seconds to receive a request body after its head; slower: 408 (default %(default)s)",
    )
    g.add_argument(
        "--max-body-bytes",
        type=positive_int,
        default=d.max_body_bytes,
        help="largest request body; larger: 413 (default %(default)s)",
    )
    g.add_argument(
        "--max-connections",
        type=positive_int,
        default=d.max_connections,
        help="open connections; beyond it the oldest idle one is closed, or the new one gets 503 "
        "(default %(default)s; lowered to fit the process's file descriptor limit)",
    )


def http_limits_from_args(args: argparse.Namespace) -> HttpLimits:
    return HttpLimits(
        max_header_bytes=args.max_header_bytes,
        header_timeout_s=args.header_timeout,
        idle_timeout_s=args.idle_timeout,
        body_timeout_s=args.body_timeout,
        max_body_bytes=args.max_body_bytes,
        max_connections=args.max_connections,
    )


def fit_connection_cap(wanted: int) -> int:
    """The connection cap the process's file descriptors allow: raise the soft RLIMIT_NOFILE towards
    the hard one if `wanted` needs it, else lower the cap (with a warning) so that accepting a
    connection can never fail with EMFILE, which would turn every new client, probes included,
    away without a word."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted
    cap = max(1, soft - FD_RESERVE)
    log.warning(
        "--max-connections %d lowered to %d: the file descriptor limit is %d (ulimit -n) and %d stay "
        "free for the rest of the process.",
        wanted,
        cap,
        soft,
        FD_RESERVE,
    )
    return cap
