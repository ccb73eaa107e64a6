"""One request's input, its life-cycle state, and the events it emits to its caller.

A `Job` is finished exactly once (`stop`, `length`, `cancelled`, or a failure), whichever thread
gets there first: the detokenize stage (EOS, stop string, max_tokens), the HTTP layer (client went
away), or any stage that hit an error. Finishing emits the final event, records the outcome and
tells the orchestrator, which frees the decode slot on its next step.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from inference_app.engine.api import SamplingParams, Tokenizer, TokenLogprobs
from inference_app.orchestrator.detokenize import IncrementalDecoder, StopStringFilter
from inference_app.orchestrator.grammar import GrammarMatcher, GrammarSpec
from inference_app.orchestrator.metrics import ServingMetrics

FinishReason = Literal["stop", "length", "cancelled"]


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate. `prompt_ids` already include any chat template.

    `prompt_logprobs` k asks for the prompt's own tokens' log-probabilities (with k alternatives)
    before any text; then `max_tokens` may be 0 (score the prompt, generate nothing). `grammar`
    constrains the output (structured outputs): it ends with "stop" once the grammar is complete."""

    prompt_ids: tuple[int, ...]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    prompt_logprobs: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    request_id: str = field(default_factory=new_request_id)
    grammar: GrammarSpec | None = None


@dataclass(frozen=True)
class TextDelta:
    """New text, safe to show (no partial characters, no part of a stop string), and the
    log-probabilities (when asked) of the tokens accepted since the previous delta: a token whose
    text is held back (a partial character, a possible stop string) comes with a later delta."""

    text: str
    logprobs: tuple[TokenLogprobs, ...] = ()


@dataclass(frozen=True)
class PromptLogprobs:
    """The prompt's tokens after the first, scored (sent before any text when asked)."""

    tokens: tuple[TokenLogprobs, ...]


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    """The request could not complete; `status` is the HTTP status that describes why."""

    message: str
    status: int = 500


Event = PromptLogprobs | TextDelta | Finished | Failed
Sink = Callable[[Event], None]  # called from orchestrator threads: must be quick and thread-safe


class RequestRejected(Exception):
    """Not admitted; `status` and `retry_after` map directly onto the HTTP answer."""

    status = 400
    outcome = "bad_request"

    def __init__(self, message: str, param: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after


class BadRequest(RequestRejected):
    status = 400
    outcome = "bad_request"


class QueueFull(RequestRejected):
    status = 429
    outcome = "rejected_queue_full"


class Unavailable(RequestRejected):
    status = 503
    outcome = "rejected_unavailable"


class Job:
    """Mutable state of an admitted request as it moves through the stages."""

    def __init__(
        self,
        request: GenerationRequest,
        sink: Sink,
        tokenizer: Tokenizer,
        metrics: ServingMetrics,
        on_done: Callable[[Job], None],
    ) -> None:
        self.request = request
        self.sink = sink
        self.metrics = metrics
        self.arrival = time.monotonic()
        self.first_token_at: float | None = None
        self.delivered = 0  # tokens seen by the detokenize stage
        self.scheduled = 0  # tokens produced so far, counted by the generate stage
        self.holds_credit = False  # a prefill credit (see Orchestrator) is held for this job
        # Where a constrained request is in its grammar: advanced by the stage that samples its
        # tokens (prefill, then generate), before its next token is sampled.
        self.matcher: GrammarMatcher | None = None
        self.outcome: str | None = None
        self._eos = frozenset() if request.ignore_eos else tokenizer.eos_token_ids
        self._decoder = IncrementalDecoder(tokenizer)
        self._stops = StopStringFilter(request.stop)
        self._logprobs: list[TokenLogprobs] = []  # accepted, not yet sent with a delta
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._on_done = on_done

    @property
    def id(self) -> str:
        return self.request.request_id

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def scored(self, tokens: list[TokenLogprobs]) -> None:
        """The prompt's log-probabilities (`prompt_logprobs`); with max_tokens 0 the job ends here."""
        if self.finished:
            return
        self.sink(PromptLogprobs(tuple(tokens)))
        if self.request.max_tokens == 0:
            self._finish_ok("length")

    def accept_token(self, token: int, logprobs: TokenLogprobs | None = None) -> None:
        """Detokenize stage: one more generated token for this request (and its log-probabilities
        when the request asked; EOS included, as vLLM does, though its text is not)."""
        if self.finished:
            return  # tokens a slot produced after its request ended are dropped
        if logprobs is not None:
            self._logprobs.append(logprobs)
        now = time.monotonic()
        if self.delivered == 0:
            self.first_token_at = now
            self.metrics.ttft.observe(now - self.arrival)
        self.delivered += 1
        self.metrics.generated_tokens.inc()
        if token in self._eos:
            self._finish_ok("stop")
            return
        text = self._stops.feed(self._decoder.add(token))
        if text:
            self.sink(self._delta(text))
        if self._stops.stopped:
            self._finish_ok("stop")
        elif self.delivered >= self.request.max_tokens:
            self._finish_ok("length")

    def grammar_complete(self) -> None:
        """Detokenize stage, after the token that completed the request's grammar: it ends with "stop"."""
        if not self.finished:
            self._finish_ok("stop")

    def cancel(self) -> bool:
        """The caller lost interest (client disconnected); frees the slot on the next step."""
        return self._finish(Finished("cancelled", len(self.request.prompt_ids), self.delivered), "cancelled")

    def fail(self, message: str, status: int = 500) -> bool:
        return self._finish(Failed(message, status), "error")

    def _finish_ok(self, reason: FinishReason) -> None:
        tail = self._stops.feed(self._decoder.flush()) if not self._stops.stopped else ""
        tail += self._stops.flush()
        if (tail or self._logprobs) and not self.finished:
            self.sink(self._delta(tail))
        if self._finish(Finished(reason, len(self.request.prompt_ids), self.delivered), "ok"):
            now = time.monotonic()
            self.metrics.e2e.observe(now - self.arrival)
            if self.first_token_at is not None and self.delivered > 1:
                self.metrics.tpot.observe((now - self.first_token_at) / (self.delivered - 1))

    def _delta(self, text: str) -> TextDelta:
        delta = TextDelta(text, tuple(self._logprobs))
        self._logprobs.clear()
        return delta

    def _finish(self, event: Event, outcome: str) -> bool:
        with self._lock:
            if self._done.is_set():
                return False
            self.outcome = outcome
            self._done.set()
        self.metrics.requests.labels(outcome=outcome).inc()
        try:
            self.sink(event)
        finally:
            self._on_done(self)
        return True
