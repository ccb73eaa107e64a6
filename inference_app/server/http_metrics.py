"""Counters of the HTTP front door, on the serving process's own metrics registry.

The connection guard and the body guard record here what they turn away, so an attack shows up
in `/metrics` as well as in the log: connections open now, and every refusal by reason. A refusal
that answers a request (4xx) is also counted as a `bad_request` outcome, like any other bad input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

from prometheus_client import Counter, Gauge

from inference_app.orchestrator import ServingMetrics
from inference_app.orchestrator.metrics import PREFIX

Reason = Literal[
    "header_too_large",  # 431
    "malformed",  # 400 from the HTTP parser (bad request line or header, HTTP/1.1 without Host, ...)
    "header_timeout",  # 408: the request head did not arrive in time
    "body_timeout",  # 408: the body did not arrive in time
    "body_too_large",  # 413
    "unsupported_media_type",  # 415
    # closed: a new connection sent nothing within the idle timeout (keep-alive ends are not counted)
    "idle_timeout",
    "evicted",  # closed: the oldest idle connection, to make room for a new one at the cap
    "connection_cap",  # 503: at the cap with no idle connection to close
]
REASONS: tuple[Reason, ...] = get_args(Reason)  # export order: as listed above
ANSWERED_4XX = frozenset(
    {
        "header_too_large",
        "malformed",
        "header_timeout",
        "body_timeout",
        "body_too_large",
        "unsupported_media_type",
    }
)


class HttpMetrics:
    def __init__(self, serving: ServingMetrics) -> None:
        r = serving.registry
        self._bad_request = serving.requests.labels(outcome="bad_request")
        self.open_connections = Gauge(f"{PREFIX}_http_connections_open", "Open HTTP connections.", registry=r)
        self.refused = Counter(
            f"{PREFIX}_http_refused",
            "Connections or requests the front door turned away, by reason.",
            ["reason"],
            registry=r,
        )
        self._refused = {reason: self.refused.labels(reason=reason) for reason in REASONS}  # zeros exported

    def bind_open_connections(self, count: Callable[[], float]) -> None:
        self.open_connections.set_function(count)

    def record(self, reason: Reason) -> None:
        self._refused[reason].inc()
        if reason in ANSWERED_4XX:
            self._bad_request.inc()
