"""Summary statistics of a load-test run: rates over the wall-clock span and latency percentiles.

Last step of `runner.py`: per-request `RequestResult`s (from `client.py`) -> one summary dict.

Latencies are reported in milliseconds as mean, median and p99 (the shape vLLM's and
JetStream's benchmarks use, so numbers compare). Failed requests count only toward `errors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from inference_app.loadtest.client import RequestResult


def stats_ms(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "median": None, "p99": None}
    arr = np.asarray(values, dtype=np.float64) * 1000.0
    return {
        "mean": round(float(arr.mean()), 3),
        "median": round(float(np.median(arr)), 3),
        "p99": round(float(np.percentile(arr, 99)), 3),
    }


def summarize(
    results: Sequence[RequestResult], duration_s: float, prompt_tokens: Sequence[int]
) -> dict[str, Any]:
    """Aggregate per-request results; `prompt_tokens[i]` is the fallback input count of request i."""
    ok = [r for r in results if r.ok]
    input_tokens = sum(
        r.prompt_tokens if r.prompt_tokens is not None else fallback
        for r, fallback in zip(results, prompt_tokens, strict=True)
        if r.ok
    )
    output_tokens = sum(r.output_tokens for r in ok)
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            key = f"HTTP {r.status}" if r.status not in (None, 200) else (r.error or "error").split(":")[0]
            errors[key] = errors.get(key, 0) + 1
    tpots = [t for t in (r.tpot for r in ok) if t is not None]
    span = max(duration_s, 1e-9)
    return {
        "duration_s": round(duration_s, 3),
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "errors": errors,
        "request_throughput": round(len(ok) / span, 4),
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "input_tok_s": round(input_tokens / span, 2),
        "output_tok_s": round(output_tokens / span, 2),
        "total_tok_s": round((input_tokens + output_tokens) / span, 2),
        "ttft_ms": stats_ms([r.ttft for r in ok if r.ttft is not None]),
        "tpot_ms": stats_ms(tpots),
        "itl_ms": stats_ms([gap for r in ok for gap in r.itl]),
        "e2e_latency_ms": stats_ms([r.latency for r in ok]),
        # One user's decode speed: what "batch-1 decode tok/s" means at concurrency 1.
        "decode_tok_s_per_request": round(1.0 / float(np.mean(tpots)), 2) if tpots else None,
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"completed {summary['completed']}  failed {summary['failed']}  in {summary['duration_s']} s"
        + (f"  errors {summary['errors']}" if summary["errors"] else ""),
        f"requests/s {summary['request_throughput']}  input tok/s {summary['input_tok_s']}  "
        f"output tok/s {summary['output_tok_s']}",
    ]
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_latency_ms"):
        s = summary[key]
        lines.append(f"{key:15s} mean {s['mean']}  median {s['median']}  p99 {s['p99']}")
    lines.append(f"decode tok/s per request {summary['decode_tok_s_per_request']}")
    return "\n".join(lines)
