"""The driver: named stages over bounded queues, with continuous batching.

One request's trip (`submit` is called by the HTTP layer or the batch runner):

1. **admission** — `submit` checks the prompt against the engine's limits (400 naming the limit,
   never silent truncation) and puts the job on the bounded admission queue; when that queue is
   full the caller gets `QueueFull` (HTTP 429 + Retry-After) instead of an unbounded backlog.
2. **prefill** thread — takes a *credit* (at most `max_slots + lookahead` prompts may hold KV at
   once, so prefill never runs far ahead of free slots), scores the prompt first when the request
   asks for its log-probabilities (`engine.score_prompt`; a request with max_tokens 0 ends there),
   runs `engine.prefill` (or, for waiting prompts of one length bucket, one `prefill_many`), hands
   the `FirstToken` to detokenize and the prefix to transfer.
3. **transfer** thread — `engine.transfer`: in disaggregated mode the KV cache moves from the
   prefill device group to the generate sharding (`jax.device_put`); in interleaved mode a no-op.
4. **generate** thread — before every step it frees the slots whose request finished (EOS, stop
   string, max_tokens, client gone, error) and lets waiting work into free slots (`Admission`:
   here, `engine.insert` of prefilled prompts), then runs one `engine.generate` step for all slots
   and passes its still on-device `StepTokens` on. A slot is freed within one step of its request
   ending; new requests join the batch on the next step.
5. **detokenize** thread — copies each step's tokens to host (overlapping the next step), turns
   them into text incrementally, applies EOS / stop strings / max_tokens, and emits events.

In interleaved mode prefill and decode share one device group: a FIFO (ticket) lock makes them
alternate, so a stream of new prompts cannot starve decoding and vice versa. In disaggregated mode
they run truly in parallel on their own groups.

With an engine that prefills in chunks inside its steps (`ChunkedPrefill`, the CPU engine),
stages 2-3 do not run: the generate thread's admission hands each admitted prompt to a free slot
(`engine.add_prompt`, after `engine.score_prompt` when asked), and every step runs the decoding
slots plus chunks of those prompts; the step that finishes a prompt also yields its first token.
No prompt pauses decoding, and none is padded to a length bucket. Which path runs is decided
once, when the orchestrator is built, from the capabilities the engine declares (`engine/api.py`).

Structured outputs: a request with a grammar (`GenerationRequest.grammar`, on an engine with
`TokenMasks`) gets a matcher at admission. Its slot's mask row says which tokens may come next; the
stage that samples its token (prefill, or the step that emits it) waits for that token on host,
advances the matcher and sets the slot's next row before the slot's next step, so a constrained
slot never runs ahead of its mask (steps without a constrained slot still overlap their host
copies). The token that completes the grammar ends the request ("stop"); a token the grammar
rejects can only be a bug in the mask path and fails the request (500, logged), never passes.

Errors: an exception in one request's prefill/transfer/insert fails that request only. An exception
in `generate` or `release` (the device loop) fails every in-flight request, marks the driver failed
(`/healthcheck` turns 503 with the reason) and rejects new work; the process stays up so the
failure is visible and the orchestrator (Kubernetes) can restart it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

import numpy as np

from inference_app.engine.api import (
    BatchedPrefill,
    ChunkedPrefill,
    Engine,
    Prefix,
    PromptScoring,
    StepLogprobs,
    TokenLogprobs,
    TokenMasks,
    batched_prefill,
    chunked_prefill,
    prompt_scoring,
    token_masks,
)
from inference_app.orchestrator.grammar import GrammarCompiler, GrammarError, SerializedTokenizer
from inference_app.orchestrator.metrics import ServingMetrics
from inference_app.orchestrator.request import (
    BadRequest,
    GenerationRequest,
    Job,
    QueueFull,
    Sink,
    Unavailable,
)

log = logging.getLogger("inference_app.orchestrator")

_POLL_S = 0.05  # how often blocked stages look at the stop flag
# Steps the generate thread dispatches ahead of the oldest one still running. Two keep the device
# busy (the next step waits queued while one runs) and its host work overlapped; each one more
# only delays newly admitted prompts, whose first chunk runs after every step already dispatched
# (with the detokenize queue as the only bound, a wave of 32 cached prompts waited ~5 steps).
STEPS_AHEAD = 2

T = TypeVar("T")


# ----- what travels between the stages ---------------------------------------------------------


@dataclass(frozen=True)
class FirstToken:
    """prefill -> detokenize: a prompt's first generated token (host int, from prefill)."""

    job: Job
    token: int
    logprobs: TokenLogprobs | None = None
    last: bool = False  # it completes the request's grammar


@dataclass(frozen=True)
class SlotJob:
    """The job that owned a slot when a step ran."""

    slot: int
    job: Job
    last: bool = False  # the step's token completes the request's grammar


@dataclass(eq=False)
class StepTokens:
    """generate -> detokenize: one step's tokens (on device until copied) for the slots it emitted.

    The copy to host normally happens on the detokenize thread, overlapping the next step. The
    generate thread forces it first (`host()`) before an `insert`, because an engine may donate
    its latest token buffer to the insert (JaxEngine does), which would delete this array.
    """

    tokens: Any  # engine array [max_slots]
    emitted: tuple[SlotJob, ...]
    dispatched_at: float
    logprobs: StepLogprobs | None = None  # per slot, when a slot of the step asked
    _host: np.ndarray | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def host(self) -> np.ndarray:
        with self._lock:
            if self._host is None:
                self._host = np.asarray(self.tokens)
                self.tokens = None
                if self.logprobs is not None:
                    self.logprobs = self.logprobs.host()
            return self._host

    def logprobs_of(self, owner: SlotJob) -> TokenLogprobs | None:
        """The log-probabilities of `owner`'s token when its request asked (after `host()`)."""
        k = owner.job.request.sampling.logprobs
        return None if k is None or self.logprobs is None else self.logprobs.row(owner.slot, k)


@dataclass(frozen=True)
class Prefilled:
    """prefill -> transfer -> generate: a job's prefix, waiting for a slot."""

    job: Job
    prefix: Prefix


@dataclass(frozen=True)
class PrefillBatch:
    """Jobs prefilled together, and the job taken from the queue that did not fit (next batch)."""

    jobs: list[Job]
    carry: Job | None = None


@dataclass(frozen=True)
class Admission(Generic[T]):
    """How waiting work enters a free decode slot: the one variable part of the generate loop.

    `waiting` is the queue it waits on; `place(item, slot)` puts it into `slot` (the slot is
    then taken) or fails or skips it (the slot stays free).
    """

    waiting: queue.Queue[T | None]
    place: Callable[[T, int], None]
    # Whether the engine can take the item now (its KV blocks); one that cannot is held, first
    # in line, until running requests free blocks.
    fits: Callable[[T], bool] = lambda item: True


class FairLock:
    """A FIFO lock: waiters get it in arrival order (threading.Lock makes no such promise)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next_ticket = 0
        self._serving = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._cond.wait_for(lambda: self._serving == ticket)
        try:
            yield
        finally:
            with self._cond:
                self._serving += 1
                self._cond.notify_all()


class Orchestrator:
    """Drives an `Engine` for many concurrent requests. Thread-safe `submit`; see module docstring."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_queue: int = 64,
        metrics: ServingMetrics | None = None,
        prefill_lookahead: int = 1,
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.mode = engine.mode
        # The engine's optional capabilities, checked once: they pick the code path.
        self._batched: BatchedPrefill | None = batched_prefill(engine)
        self._chunked: ChunkedPrefill | None = chunked_prefill(engine)
        self._scoring: PromptScoring | None = prompt_scoring(engine)
        self._masks: TokenMasks | None = token_masks(engine)
        # Built on its own thread at start (about a second for a 49k vocabulary); None: no
        # structured outputs (the engine applies no masks, or the tokenizer cannot be read).
        self._grammars: Future[GrammarCompiler] | None = None
        self.max_slots = engine.max_slots
        self.max_prefill_length = engine.max_prefill_length
        self.max_target_length = engine.max_target_length
        self.metrics = metrics or ServingMetrics()
        self._admission: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._transfer: queue.Queue[Prefilled | None] = queue.Queue(maxsize=max(1, prefill_lookahead))
        self._ready: queue.Queue[Prefilled | None] = queue.Queue()  # bounded by the credits
        self._detok: queue.Queue[FirstToken | StepTokens | None] = queue.Queue(maxsize=4)
        self._credits = threading.Semaphore(self.max_slots + prefill_lookahead)
        # Prefill and generate alternate on shared devices; chunked prefill has no prefill stage.
        shared = FairLock() if self.mode == "interleaved" and self._chunked is None else None
        self._prefill_lock: FairLock | None = shared
        self._generate_lock: FairLock | None = shared
        self._slots: list[Job | None] = [None] * self.max_slots
        self._last_step: StepTokens | None = None  # its tokens may be donated by the next insert
        self._dispatched: deque[Any] = deque()  # token arrays of the steps that may still run
        self._in_flight: set[Job] = set()
        self._in_flight_lock = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._admitting = False
        self._held: Any = None  # taken from the waiting queue, not yet fitting (see `Admission.fits`)
        self.failure: str | None = None
        self.metrics.max_slots.set(self.max_slots)
        self.metrics.bind(
            queue_depth=lambda: self._admission.qsize(),
            active_slots=lambda: self.active_slots,
            in_flight=lambda: self.in_flight,
            ready=lambda: 1.0 if self.ready else 0.0,
        )

    # ----- public API -------------------------------------------------------------------------

    @property
    def active_slots(self) -> int:
        return sum(job is not None for job in self._slots)

    @property
    def in_flight(self) -> int:
        with self._in_flight_lock:
            return len(self._in_flight)

    @property
    def queue_depth(self) -> int:
        return self._admission.qsize()

    def waiting_for_slot(self, arriving: int = 0) -> int:
        """Queued requests (plus `arriving` new ones) that the free slots cannot all take: they
        wait for running requests to end. Queued requests that fit in free slots join on the next
        step."""
        return max(0, self.queue_depth + arriving - (self.max_slots - self.active_slots))

    @property
    def structured_outputs(self) -> bool:
        """Whether requests may carry a grammar (the engine applies token masks)."""
        return self._grammars is not None

    @property
    def ready(self) -> bool:
        return self._admitting and self.failure is None

    def start(self, warmup: bool = True) -> None:
        """Warm up (compile every shape a request can reach), then start the stages."""
        log.info(
            "Initializing the driver with 1 prefill engines and 1 generate engines in %s mode", self.mode
        )
        if warmup:
            t0 = time.monotonic()
            self.engine.warmup()
            label, sizes = (
                ("step rows", self._chunked.step_buckets)
                if self._chunked is not None
                else ("prefill buckets", self.engine.prefill_buckets)
            )
            took = time.monotonic() - t0
            log.info("Warm-up done in %.1fs (%s %s)", took, label, ", ".join(map(str, sizes)))
        if self._masks is not None and isinstance(self.tokenizer, SerializedTokenizer):
            self._grammars = self._build_grammars(self.tokenizer, self._masks.mask_vocab)
        admission: Admission[Any]
        if self._chunked is not None:
            stages: tuple[tuple[str, Callable[[], None]], ...] = ()
            admission = Admission(
                self._admission, partial(self._add_prompt, self._chunked), partial(self._fits, self._chunked)
            )
            log.info(
                "Chunked prefill: prompts run inside the generate steps (up to %d token rows a step).",
                max(self._chunked.step_buckets),
            )
        else:
            stages = (("prefill", self._prefill_loop), ("transfer", self._transfer_loop))
            admission = Admission(self._ready, self._insert_prefilled)
        loops: list[tuple[str, Callable[[], None]]] = [
            *stages,
            ("generate", partial(self._generate_loop, admission)),
            ("detokenize", self._detokenize_loop),
        ]
        for stage, target in loops:
            log.info("Spinning up %s thread 0.", stage)
            thread = threading.Thread(target=self._guard(stage, target), name=f"{stage}-0", daemon=True)
            thread.start()  # before it is listed: a concurrent stop() joins only started threads
            self._threads.append(thread)
        self._admitting = True
        log.info(
            "Driver initialized: %d slots, prefill up to %d tokens, %d tokens per slot, queue bound %d.",
            self.max_slots,
            self.max_prefill_length,
            self.max_target_length,
            self._admission.maxsize,
        )

    def check(self, request: GenerationRequest) -> None:
        """Raise `BadRequest` naming the violated limit; never truncates."""
        n = len(request.prompt_ids)
        if n == 0:
            raise BadRequest("The prompt is empty (it encodes to zero tokens).", param="prompt")
        if n > self.max_prefill_length:
            raise BadRequest(
                f"The prompt has {n} tokens; this server prefills at most {self.max_prefill_length} "
                "(--max-prefill-length). Shorten the prompt.",
                param="prompt",
            )
        if request.grammar is not None and self._grammars is None:
            raise BadRequest(
                "This engine cannot constrain its output (structured outputs need token masks).",
                param="response_format",
            )
        if request.prompt_logprobs is not None and self._scoring is None:
            raise BadRequest("This engine cannot score prompts (prompt log-probabilities).", param="echo")
        if request.max_tokens < (0 if request.prompt_logprobs is not None else 1):
            raise BadRequest(f"max_tokens must be >= 1, got {request.max_tokens}.", param="max_tokens")
        room = self.max_target_length - n
        if request.max_tokens > room:
            raise BadRequest(
                f"max_tokens={request.max_tokens} does not fit: the prompt has {n} tokens and each "
                f"sequence holds at most {self.max_target_length} (--max-target-length), so at most "
                f"{room} new tokens are possible for this prompt.",
                param="max_tokens",
            )

    def submit(self, request: GenerationRequest, sink: Sink) -> Job:
        """Admit a request or raise `RequestRejected` (400 / 429 / 503). Events go to `sink`."""
        try:
            self.check(request)
            if self.failure is not None:
                raise Unavailable(f"The device loop failed: {self.failure}", retry_after=10)
            if not self._admitting:
                raise Unavailable("The server is not ready (warming up or draining).", retry_after=5)
            job = Job(request, sink, self.tokenizer, self.metrics, self._job_done)
            if request.grammar is not None and self._grammars is not None:
                try:
                    job.matcher = self._grammars.result().matcher(request.grammar)
                except GrammarError as exc:
                    raise BadRequest(f"The output grammar cannot be used: {exc}") from None
            with self._in_flight_lock:
                self._in_flight.add(job)
            try:
                self._admission.put_nowait(job)
            except queue.Full:
                with self._in_flight_lock:
                    self._in_flight.discard(job)
                raise QueueFull(
                    f"The request queue is full ({self._admission.maxsize} waiting, --max-queue); "
                    "retry later.",
                    retry_after=1,
                ) from None
        except (BadRequest, QueueFull, Unavailable) as exc:
            self.metrics.requests.labels(outcome=exc.outcome).inc()
            raise
        log.debug("[%s] admitted: %d prompt tokens", request.request_id, len(request.prompt_ids))
        return job

    def begin_drain(self) -> None:
        """Stop admitting; requests already admitted keep going."""
        self._admitting = False
        log.info("Draining: no new requests; %d in flight.", self.in_flight)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no request is in flight (True) or the timeout passes (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._in_flight_lock:
            while self._in_flight:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._in_flight_lock.wait(left if left is not None else _POLL_S)
        return True

    def abort_in_flight(self, message: str, status: int = 503) -> None:
        """Fail every admitted request now (the drain deadline passed); their slots free next step."""
        self._fail_all(message, status)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the stages; whatever is still in flight fails with 503."""
        self._admitting = False
        self._stopping.set()
        self._fail_all("The server is shutting down.", 503)
        for q in (self._admission, self._transfer, self._detok):
            with contextlib.suppress(queue.Full):
                q.put_nowait(None)
        self._ready.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        log.info("Driver stopped.")

    # ----- stages -----------------------------------------------------------------------------

    def _prefill_loop(self) -> None:
        carry: Job | None = None  # taken from the queue but not batchable with the last batch
        while not self._stopping.is_set():
            job, carry = carry or self._get(self._admission), None
            if job is None:
                continue
            if job.finished or not self._take_credit(job):
                continue
            batch = self._gather_prefill_batch(job)
            carry = batch.carry
            with self._holding(self._prefill_lock):
                jobs = [j for j in batch.jobs if self._score(j)]
            if jobs:
                self._prefill(jobs)

    def _gather_prefill_batch(self, first: Job) -> PrefillBatch:
        """`first` plus prompts already waiting in its length bucket, as many as the engine batches.

        Only jobs whose credit is free right now join (never waiting here); a job of another
        bucket ends the batch and is carried over to be prefilled next, so order is kept.
        """
        engine = self._batched
        if engine is None:
            return PrefillBatch([first])
        bucket = engine.prefill_bucket(len(first.request.prompt_ids))
        limit = engine.prefill_batch_rows(bucket)
        batch = [first]
        while len(batch) < limit and self._credits.acquire(blocking=False):
            try:
                job = self._admission.get_nowait()
            except queue.Empty:
                job = None
            if job is None or job.finished:
                self._credits.release()
                if job is None:
                    break
                continue
            if engine.prefill_bucket(len(job.request.prompt_ids)) != bucket:
                self._credits.release()
                return PrefillBatch(batch, carry=job)
            job.holds_credit = True
            batch.append(job)
        return PrefillBatch(batch)

    def _prefill(self, batch: list[Job]) -> None:
        """Prefill jobs (holding credits) together; a failing batch is retried job by job, so an
        exception fails only the request that caused it."""
        try:
            t0 = time.monotonic()
            with self._holding(self._prefill_lock):
                if self._masks is not None and any(j.matcher is not None for j in batch):
                    prefixes = self._masks.prefill_masked(
                        [j.request.prompt_ids for j in batch],
                        [j.request.sampling for j in batch],
                        np.stack([self._first_mask(j) for j in batch]),
                    )
                elif len(batch) == 1 or self._batched is None:
                    prefixes = [self.engine.prefill(j.request.prompt_ids, j.request.sampling) for j in batch]
                else:
                    prefixes = self._batched.prefill_many(
                        [j.request.prompt_ids for j in batch], [j.request.sampling for j in batch]
                    )
            self.metrics.prefill_step.observe(time.monotonic() - t0)
            self.metrics.prompt_tokens.inc(sum(len(j.request.prompt_ids) for j in batch))
        except Exception as exc:
            if len(batch) > 1:
                log.warning("batched prefill of %d prompts failed (%s); retrying one by one", len(batch), exc)
                for job in batch:
                    self._prefill([job])
                return
            job = batch[0]
            log.exception("[%s] prefill failed", job.id)
            job.fail(f"Prefill failed: {type(exc).__name__}: {exc}")
            self._return_credit(job)
            return
        for job, prefix in zip(batch, prefixes, strict=True):
            last = job.matcher is not None and self._advance(job, int(prefix.first_token))
            self._put(self._detok, FirstToken(job, int(prefix.first_token), prefix.logprobs, last))
            if last:
                self._return_credit(job)  # its grammar is complete (or it failed): no slot needed
            else:
                self._put(self._transfer, Prefilled(job, prefix))

    def _transfer_loop(self) -> None:
        while not self._stopping.is_set():
            item = self._get(self._transfer)
            if item is None:
                continue
            if item.job.finished:
                self._return_credit(item.job)
                continue
            try:
                prefix = self.engine.transfer(item.prefix)
            except Exception as exc:
                log.exception("[%s] transfer failed", item.job.id)
                item.job.fail(f"KV transfer failed: {type(exc).__name__}: {exc}")
                self._return_credit(item.job)
                continue
            self._ready.put(Prefilled(item.job, prefix))

    def _generate_loop(self, admission: Admission[Any]) -> None:
        """Free finished slots, admit waiting work into free slots, run one step, hand it on."""
        while not self._stopping.is_set():
            self._release_finished()
            self._admit(admission, block=self.active_slots == 0)
            if not self.active_slots:
                continue
            t0 = time.monotonic()
            with self._holding(self._generate_lock):
                out = self.engine.generate()
            slots = range(self.max_slots) if out.slots is None else out.slots
            step = StepTokens(
                out.tokens,
                tuple(SlotJob(s, job) for s in slots if (job := self._slots[s]) is not None),
                t0,
                out.logprobs,
            )
            if any(owner.job.matcher is not None for owner in step.emitted):
                step.emitted = self._constrain(step)
            self._last_step = step
            self._put(self._detok, step)
            self._dispatched.append(out.tokens)
            if len(self._dispatched) > STEPS_AHEAD:
                _wait_ready(self._dispatched.popleft())
            for owner in step.emitted:
                owner.job.scheduled += 1
                if owner.last or owner.job.scheduled >= owner.job.request.max_tokens:
                    self._release(owner.slot)  # its last token is computed; the slot can take a new job

    def _constrain(self, step: StepTokens) -> tuple[SlotJob, ...]:
        """Advance the grammars of the step's constrained slots by their tokens (waiting for them on
        host: their next masks depend on them) and set their next masks; the emitted slots, those
        whose token ends their request marked `last`."""
        assert self._masks is not None  # a job has a matcher only on an engine with TokenMasks
        host = step.host()
        emitted = []
        for owner in step.emitted:
            job = owner.job
            if job.matcher is not None and not job.finished:
                if self._advance(job, int(host[owner.slot])):
                    owner = dataclasses.replace(owner, last=True)
                else:
                    self._masks.set_token_mask(owner.slot, job.matcher.mask())
            emitted.append(owner)
        return tuple(emitted)

    def _advance(self, job: Job, token: int) -> bool:
        """Feed a constrained job's sampled token to its grammar; whether the job ends with it (the
        grammar is complete, or it rejected the token: then the job has failed)."""
        assert job.matcher is not None
        if job.matcher.accept(token):
            return job.matcher.done
        log.error(
            "[%s] the grammar rejects token %d, sampled under the grammar's own mask: a bug in the "
            "token-mask path; failing the request",
            job.id,
            token,
        )
        job.fail("Internal error: the output left its grammar (structured outputs); see the server log.")
        return True

    def _first_mask(self, job: Job) -> np.ndarray:
        """The mask row of a job's first token (all ones: unconstrained)."""
        if job.matcher is not None:
            return job.matcher.mask().copy()
        assert self._masks is not None
        return np.full((self._masks.mask_vocab + 31) // 32, -1, np.int32)

    def _build_grammars(self, tokenizer: SerializedTokenizer, vocab: int) -> Future[GrammarCompiler]:
        """The grammar compiler, built on its own thread; a request with a grammar waits for it."""
        done: Future[GrammarCompiler] = Future()

        def build() -> None:
            try:
                done.set_result(GrammarCompiler.of(tokenizer, vocab))
            except Exception as exc:
                log.exception("building the grammar compiler failed; structured outputs will fail")
                done.set_exception(exc)

        threading.Thread(target=build, name="grammar-init", daemon=True).start()
        return done

    def _admit(self, admission: Admission[Any], block: bool) -> None:
        """Let waiting work into free slots (blocking briefly when there is nothing to do)."""
        while None in self._slots:
            item, self._held = self._held, None
            if item is None:
                try:
                    item = admission.waiting.get(timeout=_POLL_S) if block else admission.waiting.get_nowait()
                except queue.Empty:
                    return
            block = False
            if item is None:
                return
            if not admission.fits(item):
                self._held = item
                return
            admission.place(item, self._slots.index(None))

    def _insert_prefilled(self, item: Prefilled, slot: int) -> None:
        """Admission after a separate prefill: the prompt's KV goes into the slot."""
        job = item.job
        if job.finished or job.request.max_tokens <= 1:
            self._return_credit(job)  # done with its first token (or gone): no slot needed
            return
        if self._last_step is not None:
            self._last_step.host()  # before the engine may donate that buffer
            self._last_step = None
        self._dispatched.clear()  # every step has run (the last one's tokens are on host)
        try:
            self.engine.insert(item.prefix, slot)
        except Exception as exc:
            log.exception("[%s] insert into slot %d failed", job.id, slot)
            job.fail(f"Insert failed: {type(exc).__name__}: {exc}")
            self._slots[slot] = job
            self._release(slot)
            return
        if job.matcher is not None and self._masks is not None:
            self._masks.set_token_mask(slot, job.matcher.mask())  # advanced by the first token
        job.scheduled = 1  # the first token came from prefill
        self._slots[slot] = job
        log.debug("[%s] inserted into slot %d", job.id, slot)

    @staticmethod
    def _fits(engine: ChunkedPrefill, job: Job) -> bool:
        """Chunked prefill: whether the engine's KV cache can hold the request now (a request that
        only scores its prompt, max_tokens 0, needs no KV blocks)."""
        r = job.request
        return job.finished or r.max_tokens < 1 or engine.can_admit(r.prompt_ids, r.max_tokens)

    def _add_prompt(self, engine: ChunkedPrefill, job: Job, slot: int) -> None:
        """Admission with chunked prefill: the prompt runs in the coming steps, in this slot; its
        KV blocks (prompt + max_tokens) are reserved now."""
        if job.finished or not self._score(job):
            return
        try:
            engine.add_prompt(slot, job.request.prompt_ids, job.request.sampling, job.request.max_tokens)
            if job.matcher is not None and self._masks is not None:
                self._masks.set_token_mask(slot, job.matcher.mask())  # for its first token
        except Exception as exc:
            log.exception("[%s] prefill failed", job.id)
            job.fail(f"Prefill failed: {type(exc).__name__}: {exc}")
            return
        self._slots[slot] = job
        self.metrics.prompt_tokens.inc(len(job.request.prompt_ids))
        log.debug("[%s] prefilling in slot %d", job.id, slot)

    def _detokenize_loop(self) -> None:
        last_host_at = 0.0
        while not self._stopping.is_set():
            match self._get(self._detok):
                case FirstToken(job, token, logprobs, last):
                    self._deliver(job, token, logprobs)
                    if last:
                        job.grammar_complete()
                case StepTokens() as step:
                    host = step.host()  # waits for the step; the next one is already dispatched
                    now = time.monotonic()
                    self.metrics.decode_step.observe(now - max(step.dispatched_at, last_host_at))
                    last_host_at = now
                    for owner in step.emitted:
                        self._deliver(owner.job, int(host[owner.slot]), step.logprobs_of(owner))
                        if owner.last:
                            owner.job.grammar_complete()

    # ----- helpers ----------------------------------------------------------------------------

    def _score(self, job: Job) -> bool:
        """Score the prompt when the request asks (on the calling stage's thread); whether the job
        still needs a slot (not when it failed, or asked for no generated token)."""
        k = job.request.prompt_logprobs
        if k is not None and self._scoring is not None:
            try:
                job.scored(self._scoring.score_prompt(job.request.prompt_ids, k))
            except Exception as exc:
                log.exception("[%s] prompt scoring failed", job.id)
                job.fail(f"Prompt scoring failed: {type(exc).__name__}: {exc}")
        if job.finished:
            self._return_credit(job)
            return False
        return True

    def _deliver(self, job: Job, token: int, logprobs: TokenLogprobs | None = None) -> None:
        try:
            job.accept_token(token, logprobs)
        except Exception as exc:
            log.exception("[%s] detokenization failed", job.id)
            job.fail(f"Detokenization failed: {type(exc).__name__}: {exc}")

    def _release_finished(self) -> None:
        for slot, job in enumerate(self._slots):
            if job is not None and job.finished:
                self._release(slot)

    def _release(self, slot: int) -> None:
        job = self._slots[slot]
        self.engine.release(slot)
        self._slots[slot] = None
        if job is not None:
            self._return_credit(job)

    def _take_credit(self, job: Job) -> bool:
        while not self._stopping.is_set():
            if self._credits.acquire(timeout=_POLL_S):
                if job.finished:
                    self._credits.release()
                    return False
                job.holds_credit = True
                return True
        return False

    def _return_credit(self, job: Job) -> None:
        if job.holds_credit:
            job.holds_credit = False
            self._credits.release()

    def _job_done(self, job: Job) -> None:
        with self._in_flight_lock:
            self._in_flight.discard(job)
            self._in_flight_lock.notify_all()
        log.debug("[%s] finished: %s after %d tokens", job.id, job.outcome, job.delivered)

    def _fail_all(self, message: str, status: int) -> None:
        with self._in_flight_lock:
            jobs = list(self._in_flight)
        for job in jobs:
            job.fail(message, status)

    def _guard(self, stage: str, loop: Callable[[], None]) -> Callable[[], None]:
        """Run a stage loop; if it dies, fail loudly: health turns red, in-flight requests fail."""

        def run() -> None:
            try:
                loop()
            except Exception as exc:
                self.failure = f"{stage} stage crashed: {type(exc).__name__}: {exc}"
                log.exception("The %s stage crashed; the driver is now failed", stage)
                self._admitting = False
                self._fail_all(f"The device loop failed: {self.failure}", 500)

        return run

    @contextlib.contextmanager
    def _holding(self, lock: FairLock | None) -> Iterator[None]:
        if lock is None:
            yield
        else:
            with lock.hold():
                yield

    def _get(self, q: queue.Queue[Any]) -> Any:
        try:
            return q.get(timeout=_POLL_S)
        except queue.Empty:
            return None

    def _put(self, q: queue.Queue[Any], item: Any) -> None:
        """Put on a bounded queue without deadlocking shutdown."""
        while not self._stopping.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue


def _wait_ready(tokens: Any) -> None:
    """Block until a dispatched step's tokens exist (an engine's host arrays are ready at once)."""
    ready = getattr(tokens, "block_until_ready", None)
    if ready is not None:
        ready()
