"""Admission before the orchestrator: cheap limits, tokenization off the event loop, a queue-time budget.

Between a route's parsed body and `ServingState.submit`, in this order:
1. **Cheap limits** on what arrived, before any tokenization: a prompt or conversation longer in
   characters than `--max-prefill-length` tokens can ever be (the longest token of the vocabulary
   times the limit) is a 400 at once, and so is a conversation with more messages than tokens
   allowed. A 1 MB prompt costs a length check, not a second of BPE on the event loop.
2. **Tokenization** (and chat-template rendering) runs on a small thread pool, so `/healthcheck`
   and running streams never wait behind a long prompt.
3. **Queue-time budget**: when the wait a new request can expect (requests queued ahead of it over
   the recent completion rate) exceeds `--max-queue-wait`, it gets 503 with `Retry-After` at once
   instead of waiting in a deep queue for an answer its client has given up on.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from inference_app.engine.api import Tokenizer
from inference_app.orchestrator import ServingMetrics, Unavailable
from inference_app.orchestrator.request import BadRequest

T = TypeVar("T")

TOKENIZE_THREADS = 2
RATE_WINDOW_S = 30.0  # completions over this window give the service rate


def longest_token_chars(tokenizer: Tokenizer) -> int:
    """Characters of the longest single token: no prompt of more than `limit` times this many
    characters can encode to `limit` tokens or fewer."""
    return max(len(tokenizer.decode([i])) for i in range(tokenizer.vocab_size))


class PromptLimits:
    """The checks that need no tokenization (built once per loaded engine)."""

    def __init__(self, tokenizer: Tokenizer, max_prefill_length: int) -> None:
        self.max_prefill_length = max_prefill_length
        self.max_chars = max_prefill_length * max(1, longest_token_chars(tokenizer))

    def check_text(self, text: str, param: str = "prompt") -> None:
        if len(text) > self.max_chars:
            raise BadRequest(
                f"The {param} has {len(text)} characters: more than the {self.max_prefill_length} tokens "
                f"(--max-prefill-length) any {self.max_chars}-character text can fit; it is never truncated.",
                param=param,
            )

    def check_messages(self, contents: Sequence[str]) -> None:
        if len(contents) > self.max_prefill_length:
            raise BadRequest(
                f"{len(contents)} messages cannot fit {self.max_prefill_length} prompt tokens "
                "(--max-prefill-length).",
                param="messages",
            )
        self.check_text("".join(contents), param="messages")


class Tokenization:
    """A small pool for tokenizing and rendering chat templates off the event loop."""

    def __init__(self, threads: int = TOKENIZE_THREADS) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tokenize")

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class QueueBudget:
    """Expected wait = requests queued / recent completions per second; over budget: 503."""

    def __init__(self, budget_s: float, metrics: ServingMetrics) -> None:
        self.budget_s = budget_s
        self._metrics = metrics
        self._samples: deque[tuple[float, float]] = deque()  # (time, requests completed so far)
        self._lock = threading.Lock()

    def _completed(self) -> float:
        registry = self._metrics.registry
        total = 0.0
        for outcome in ("ok", "cancelled", "error"):
            total += registry.get_sample_value("inference_requests_total", {"outcome": outcome}) or 0.0
        return total

    def completion_rate(self) -> float | None:
        """Requests finished per second over the last `RATE_WINDOW_S` (None until measurable)."""
        now, done = time.monotonic(), self._completed()
        with self._lock:
            self._samples.append((now, done))
            while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_S:
                self._samples.popleft()
            t0, done0 = self._samples[0]
        if now - t0 < 1.0 or done <= done0:
            return None
        return (done - done0) / (now - t0)

    def check(self, queued: int) -> None:
        """Raise `Unavailable` (503 + Retry-After) when `queued` requests ahead take too long."""
        rate = self.completion_rate()  # sampled on every admission, so it is known when a burst comes
        if queued == 0 or rate is None:
            return
        wait = queued / rate
        if wait > self.budget_s:
            raise Unavailable(
                f"The server is overloaded: {queued} requests are queued and about {rate:.1f} finish per "
                f"second, so this one would wait ~{wait:.0f}s, over the {self.budget_s:g}s budget "
                "(--max-queue-wait); retry later.",
                retry_after=min(60, max(1, math.ceil(wait - self.budget_s))),
            )
