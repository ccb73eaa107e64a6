"""Send one batch item to an OpenAI-compatible endpoint, retrying what is worth retrying.

The HTTP `Backend` of `batch --endpoint` (`local.py` is the in-process one); both turn a
`BatchItem` into the same output record, which `cli.py` appends to the `store`.

Prompts go to `/v1/completions`, chat messages to `/v1/chat/completions` (non-streaming: the
response carries the text, `finish_reason` and usage counts). Retried, with exponential backoff
and jitter (or the server's `Retry-After` when it sends one): 429, 5xx, and transport errors
(refused/reset connections, timeouts). Any other 4xx is permanent: it is recorded with the
server's message and never retried, since sending the same request again cannot succeed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from inference_app.batch.items import BatchItem

# Turns one input line into its output record (HTTP here, in-process in `local.py`).
Backend = Callable[[BatchItem], Awaitable[dict[str, Any]]]

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0

    def delay(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if retry_after is not None:
            try:
                return min(self.max_delay_s, max(0.0, float(retry_after)))
            except ValueError:
                pass  # an HTTP-date: fall back to our own backoff
        return min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)


def error_message(resp: httpx.Response) -> str:
    """The server's error text: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or raw."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:500]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])
        if isinstance(err, str):
            return err
        if "detail" in body:
            return str(body["detail"])[:500]
    return str(body)[:500]


def build_request(item: BatchItem, model: str | None, default_max_tokens: int) -> tuple[str, dict[str, Any]]:
    body: dict[str, Any] = {"max_tokens": default_max_tokens, **item.sampling}
    if model is not None:
        body["model"] = model
    if item.messages is not None:
        return "/v1/chat/completions", {**body, "messages": item.messages}
    return "/v1/completions", {**body, "prompt": item.prompt}


def parse_response(item: BatchItem, body: dict[str, Any]) -> tuple[str, str | None, dict[str, Any]]:
    choice = (body.get("choices") or [{}])[0]
    text = choice.get("message", {}).get("content") if item.messages is not None else choice.get("text")
    return str(text or ""), choice.get("finish_reason"), body.get("usage") or {}


def record(
    item: BatchItem,
    *,
    text: str | None = None,
    finish_reason: str | None = None,
    usage: dict[str, Any] | None = None,
    latency_s: float,
    attempts: int,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One output line. `error` is None on success, else {status, message, retryable}."""
    usage = usage or {}
    rec: dict[str, Any] = {
        "id": item.id,
        "text": text,
        "finish_reason": finish_reason,
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "latency_s": round(latency_s, 4),
        "attempts": attempts,
        "error": error,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if item.metadata is not None:
        rec["metadata"] = item.metadata
    return rec


async def run_item(
    client: httpx.AsyncClient,
    endpoint: str,
    item: BatchItem,
    *,
    model: str | None,
    max_tokens: int,
    policy: RetryPolicy,
) -> dict[str, Any]:
    """Return the item's record; never raises for request failures."""
    path, body = build_request(item, model, max_tokens)
    url = endpoint.rstrip("/") + path
    start = time.perf_counter()
    for attempt in range(1, policy.max_attempts + 1):
        retry_after: str | None = None
        try:
            resp = await client.post(url, json=body)
        except httpx.TransportError as exc:
            failure: dict[str, Any] = {
                "status": None,
                "message": f"{type(exc).__name__}: {exc}",
                "retryable": True,
            }
        else:
            if resp.status_code == 200:
                text, finish, usage = parse_response(item, resp.json())
                return record(
                    item,
                    text=text,
                    finish_reason=finish,
                    usage=usage,
                    latency_s=time.perf_counter() - start,
                    attempts=attempt,
                )
            retryable = resp.status_code in RETRY_STATUSES
            failure = {"status": resp.status_code, "message": error_message(resp), "retryable": retryable}
            if not retryable:
                break
            retry_after = resp.headers.get("retry-after")
        if attempt < policy.max_attempts:
            await asyncio.sleep(policy.delay(attempt, retry_after))
    return record(item, latency_s=time.perf_counter() - start, attempts=attempt, error=failure)


async def wait_ready(client: httpx.AsyncClient, endpoint: str, timeout_s: float) -> str | None:
    """Wait for the server to list its models (it may still be warming up); return the first id.

    In the cluster the batch Job can start before the Service has a ready pod, so connection
    errors and 503s are waited out up to `timeout_s`. A server without `/v1/models` -> None.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.5
    while True:
        try:
            resp = await client.get(endpoint.rstrip("/") + "/v1/models")
            if resp.status_code == 200:
                data = resp.json().get("data") or []
                return str(data[0]["id"]) if data else None
            if resp.status_code == 404:
                return None
            problem = f"HTTP {resp.status_code}"
        except httpx.TransportError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if time.monotonic() + delay > deadline:
            raise ConnectionError(f"{endpoint} not ready after {timeout_s:.0f} s ({problem})")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)
