"""Admission before the orchestrator: cheap limits, tokenization off the event loop, a queue-time budget.

Between a route's parsed body and `ServingState.submit`, in this order:
1. **Cheap limits** on what arrived, before any tokenization: a prompt or conversation longer in
   characters than `--max-prefill-length` tokens can ever be (the longest token of the vocabulary
   times the limit) is a 400 at once, and so is a conversation with more messages than tokens
   allowed. A 1 MB prompt costs a length check, not a second of BPE on the event loop.
2. **Tokenization** (and chat-template rendering) runs on a small thread pool, so `/healthcheck`
   and running streams never wait behind a long prompt (the tokenizer lets go of the GIL while it
   encodes, see `model/tokenizer.py`).
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
from inference_app.orchestrator import Unavailable
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
                f"The {param} has {len(text)} characters, more than any text of {self.max_prefill_length} "
                f"tokens can have ({self.max_chars}); this server prefills at most {self.max_prefill_length} "
                "tokens (--max-prefill-length). Shorten the prompt.",
                param=param,
            )

    def check_messages(self, contents: Sequence[str]) -> None:
        if len(contents) > self.max_prefill_length:
            raise BadRequest(
                f"{len(contents)} messages cannot fit: this server prefills at most "
                f"{self.max_prefill_length} tokens (--max-prefill-length).",
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
    """Expected wait = requests queued / the service rate; over the budget: 503. A budget of 0 admits
    everything (the queue's length still bounds it).

    The service rate is measured only from completions while requests were waiting (the slots were
    saturated): at lower load, completions per second measure the demand, not the capacity, and a
    burst after a quiet spell would be refused for waits it will never see. Until `MIN_SAMPLES`
    such completions fall in the last `RATE_WINDOW_S`, nothing is refused on this ground."""

    MIN_SAMPLES = 4

    def __init__(self, budget_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_s = budget_s
        self._clock = clock
        self._done: deque[float] = deque()  # when saturated requests finished, oldest first
        self._lock = threading.Lock()

    def completed(self, queued: int) -> None:
        """An admitted request finished (or was cancelled, or failed) with `queued` others waiting."""
        if queued > 0:
            with self._lock:
                self._done.append(self._clock())

    def completion_rate(self) -> float | None:
        """Requests finished per second while saturated, over the last `RATE_WINDOW_S` (None until
        measurable)."""
        now = self._clock()
        with self._lock:
            while self._done and now - self._done[0] > RATE_WINDOW_S:
                self._done.popleft()
            if len(self._done) < self.MIN_SAMPLES:
                return None
            span, intervals = self._done[-1] - self._done[0], len(self._done) - 1
        return intervals / span if span > 0 else None

    def check(self, queued: int) -> None:
        """Raise `Unavailable` (503 + Retry-After) when `queued` requests ahead take too long."""
        if self.budget_s <= 0 or queued == 0:
            return
        rate = self.completion_rate()
        if rate is None:
            return
        wait = queued / rate
        if wait > self.budget_s:
            raise Unavailable(
                f"The server is overloaded: {queued} requests are queued and about {rate:.1f} finish per "
                f"second, so this one would wait ~{wait:.0f}s, over the {self.budget_s:g}s budget "
                "(--max-queue-wait); retry later.",
                retry_after=min(60, max(1, math.ceil(wait - self.budget_s))),
            )
