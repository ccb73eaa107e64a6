"""Prometheus metrics of one serving process (own registry: no globals, tests can build many).

Gauges read their value at scrape time through callbacks (`set_function`), so they never report a
value captured once at start-up. The orchestrator's stages and `Job`s record into it; the
server's `/metrics` route renders it.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "inference"
# Outcomes a request can end with; every admitted or rejected request is counted under one.
OUTCOMES = ("ok", "cancelled", "error", "rejected_queue_full", "rejected_unavailable", "bad_request")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServingMetrics:
    """All metric families; the orchestrator and the HTTP layer record into the same instance."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.queue_depth = Gauge(
            f"{PREFIX}_queue_depth", "Requests admitted and waiting for prefill.", registry=r
        )
        self.active_slots = Gauge(f"{PREFIX}_active_slots", "Decode slots holding a request.", registry=r)
        self.max_slots = Gauge(f"{PREFIX}_max_slots", "Decode slots of the engine.", registry=r)
        self.in_flight = Gauge(
            f"{PREFIX}_requests_in_flight", "Admitted requests not yet finished.", registry=r
        )
        self.healthy = Gauge(f"{PREFIX}_ready", "1 when warmed up and admitting requests.", registry=r)
        self.requests = Counter(f"{PREFIX}_requests", "Requests by outcome.", ["outcome"], registry=r)
        for outcome in OUTCOMES:
            self.requests.labels(outcome=outcome)  # export zeros so rates work from the start
        self.ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "Arrival to first generated token.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            f"{PREFIX}_time_per_output_token_seconds",
            "Mean time between output tokens after the first, per request.",
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Arrival to last token.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "Prompt tokens prefilled.", registry=r)
        self.generated_tokens = Counter(
            f"{PREFIX}_generated_tokens", "Tokens generated and delivered.", registry=r
        )
        self.prefill_step = Histogram(
            f"{PREFIX}_prefill_step_seconds", "Wall time of one prefill.", buckets=_STEP_BUCKETS, registry=r
        )
        self.decode_step = Histogram(
            f"{PREFIX}_decode_step_seconds",
            "Wall time of one decode step for all slots (dispatch to tokens on host).",
            buckets=_STEP_BUCKETS,
            registry=r,
        )

    def bind(
        self,
        queue_depth: Callable[[], float],
        active_slots: Callable[[], float],
        in_flight: Callable[[], float],
        ready: Callable[[], float],
    ) -> None:
        """Make the gauges read live values from their owners at every scrape."""
        self.queue_depth.set_function(queue_depth)
        self.active_slots.set_function(active_slots)
        self.in_flight.set_function(in_flight)
        self.healthy.set_function(ready)

    def render(self) -> bytes:
        return generate_latest(self.registry)
