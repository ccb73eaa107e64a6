"""Admission before the orchestrator: cheap limits, tokenization off the event loop, a queue-time budget.

Between a route's parsed body and `ServingState.submit`, in this order:
1. **Cheap limits** on what arrived, before any tokenization: a prompt or conversation longer in
   characters than `--max-prefill-length` tokens can ever be (the longest token of the vocabulary
   times the limit) is a 400 at once, and so is a conversation with more messages than tokens
   allowed. A 1 MB prompt costs a length check, not a second of BPE on the event loop.
2. **Tokenization** (and chat-template rendering) runs on a small thread pool, so `/healthcheck`
   and running streams never wait behind a long prompt (the tokenizer lets go of the GIL while it
   encodes, see `model/tokenizer.py`).
3. **Queue-time budget**: when the wait a new request can expect (the completions it must wait for
   before a slot is free, over the completion rate while saturated) exceeds `--max-queue-wait`, it
   gets 503 with `Retry-After` at once instead of waiting in a deep queue for an answer its client
   has given up on.
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
    """Expected wait = completions a new request must wait for / the service rate; over the
    budget: 503. A budget of 0 admits everything (the queue's length still bounds it).

    Only a request that finds no free slot waits for a completion: a burst into free slots is taken
    on the next step, however many arrive. The service rate is measured only while saturated: from
    the intervals between consecutive completions that each left requests waiting for a slot. At
    lower load completions per second measure the demand, not the capacity, and a quiet time
    between two saturated spells is not service time (counting it read as 0.2 requests/s and
    refused requests a free server then served): a completion with nobody waiting ends a spell,
    and the interval to the next spell's first completion is not counted. Until `MIN_SAMPLES`
    such intervals fall in the last `RATE_WINDOW_S`, nothing is refused on this ground."""

    MIN_SAMPLES = 3

    def __init__(self, budget_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_s = budget_s
        self._clock = clock
        self._intervals: deque[tuple[float, float]] = deque()  # (ended at, seconds), oldest first
        self._last: float | None = None  # the previous completion, if it left requests waiting
        self._lock = threading.Lock()

    def completed(self, waiting: int) -> None:
        """An admitted request finished (or was cancelled, or failed) with `waiting` others
        waiting for a slot."""
        now = self._clock()
        with self._lock:
            if waiting <= 0:
                self._last = None
                return
            if self._last is not None:
                self._intervals.append((now, now - self._last))
            self._last = now

    def completion_rate(self) -> float | None:
        """Requests finished per second while saturated, over the last `RATE_WINDOW_S` (None until
        measurable)."""
        now = self._clock()
        with self._lock:
            while self._intervals and now - self._intervals[0][0] > RATE_WINDOW_S:
                self._intervals.popleft()
            if len(self._intervals) < self.MIN_SAMPLES:
                return None
            busy = sum(seconds for _, seconds in self._intervals)
            count = len(self._intervals)
        return count / busy if busy > 0 else None

    def check(self, waiting: int) -> None:
        """Raise `Unavailable` (503 + Retry-After) when a new request would wait too long for a
        slot: `waiting` is how many completions must come first (0: a slot is free for it)."""
        if self.budget_s <= 0 or waiting <= 0:
            return
        rate = self.completion_rate()
        if rate is None:
            return
        wait = waiting / rate
        if wait > self.budget_s:
            raise Unavailable(
                f"The server is overloaded: this request needs {waiting} others to finish before a "
                f"slot is free and about {rate:.1f} finish per second, so it would wait ~{wait:.0f}s, "
                f"over the {self.budget_s:g}s budget (--max-queue-wait); retry later.",
                retry_after=min(60, max(1, math.ceil(wait - self.budget_s))),
            )
