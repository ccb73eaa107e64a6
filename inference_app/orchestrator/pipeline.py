"""The driver: four named stages over bounded queues, with continuous batching.

One request's trip (`submit` is called by the HTTP layer or the batch runner):

1. **admission** — `submit` checks the prompt against the engine's limits (400 naming the limit,
   never silent truncation) and puts the job on the bounded admission queue; when that queue is
   full the caller gets `QueueFull` (HTTP 429 + Retry-After) instead of an unbounded backlog.
2. **prefill** thread — takes a *credit* (at most `max_slots + lookahead` prompts may hold KV at
   once, so prefill never runs far ahead of free slots), runs `engine.prefill`, hands the first
   token to detokenize and the prefix to transfer.
3. **transfer** thread — `engine.transfer`: in disaggregated mode the KV cache moves from the
   prefill device group to the generate sharding (`jax.device_put`); in interleaved mode a no-op.
4. **generate** thread — before every decode step it frees the slots whose request finished (EOS,
   stop string, max_tokens, client gone, error) and inserts waiting prefixes into free slots, then
   runs one `engine.generate` step for all slots and passes the (still on-device) tokens on. A slot
   is freed within one step of its request ending; new requests join the batch on the next step.
5. **detokenize** thread — copies each step's tokens to host (overlapping the next step), turns
   them into text incrementally, applies EOS / stop strings / max_tokens, and emits events.

In interleaved mode prefill and decode share one device group: a FIFO (ticket) lock makes them
alternate, so a stream of new prompts cannot starve decoding and vice versa. In disaggregated mode
they run truly in parallel on their own groups.

With an engine that prefills in chunks (`engine.chunked_prefill`, the CPU engine), stages 2-3
fold into the generate thread: it hands each admitted prompt to a free slot (`add_prompt`), and
every step runs the decoding slots plus chunks of those prompts; the step that finishes a prompt
also yields its first token. No prompt pauses decoding, and none is padded to a length bucket.

Errors: an exception in one request's prefill/transfer/insert fails that request only. An exception
in `generate` or `release` (the device loop) fails every in-flight request, marks the driver failed
(`/healthcheck` turns 503 with the reason) and rejects new work; the process stays up so the
failure is visible and the orchestrator (Kubernetes) can restart it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference_app.engine.api import Engine, Prefix
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


@dataclass(frozen=True)
class FirstToken:
    job: Job
    token: int


class StepTokens:
    """One decode step's tokens (on device until copied) and which job owned each active slot.

    The copy to host normally happens on the detokenize thread, overlapping the next step. The
    generate thread forces it first (`host()`) before an `insert`, because an engine may donate
    its latest token buffer to the insert (JaxEngine does), which would delete this array.
    """

    def __init__(self, tokens: Any, slots: tuple[tuple[int, Job], ...], dispatched_at: float) -> None:
        self.slots = slots
        self.dispatched_at = dispatched_at
        self._tokens: Any = tokens
        self._host: np.ndarray | None = None
        self._lock = threading.Lock()

    def host(self) -> np.ndarray:
        with self._lock:
            if self._host is None:
                self._host = np.asarray(self._tokens)
                self._tokens = None
            return self._host


@dataclass(frozen=True)
class Prefilled:
    job: Job
    prefix: Prefix


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
        self.mode = engine.settings.mode
        self.max_slots = engine.max_slots
        self.max_prefill_length = engine.max_prefill_length
        self.max_target_length = engine.max_target_length
        self.metrics = metrics or ServingMetrics()
        self._admission: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._transfer: queue.Queue[Prefilled | None] = queue.Queue(maxsize=max(1, prefill_lookahead))
        self._ready: queue.Queue[Prefilled | None] = queue.Queue()  # bounded by the credits
        self._detok: queue.Queue[FirstToken | StepTokens | None] = queue.Queue(maxsize=4)
        self._credits = threading.Semaphore(self.max_slots + prefill_lookahead)
        shared = FairLock()
        self._prefill_lock: FairLock | None = shared if self.mode == "interleaved" else None
        self._generate_lock: FairLock | None = shared if self.mode == "interleaved" else None
        self._slots: list[Job | None] = [None] * self.max_slots
        self._last_step: StepTokens | None = None  # its tokens may be donated by the next insert
        self._in_flight: set[Job] = set()
        self._in_flight_lock = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.chunked = bool(getattr(engine, "chunked_prefill", False)) and hasattr(engine, "add_prompt")
        self._admitting = False
        self._held: Job | None = None  # taken from the admission queue, waiting for KV blocks
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

    @property
    def ready(self) -> bool:
        return self._admitting and self.failure is None

    def start(self, warmup: bool = True) -> None:
        """Warm up (compile every prefill bucket, insert, generate), then start the stages."""
        log.info(
            "Initializing the driver with 1 prefill engines and 1 generate engines in %s mode", self.mode
        )
        if warmup:
            t0 = time.monotonic()
            self.engine.warmup()
            label, sizes = (
                ("step rows", getattr(self.engine, "step_buckets", ()))
                if self.chunked
                else ("prefill buckets", self.engine.prefill_buckets)
            )
            log.info("Warm-up done in %.1fs (%s %s)", time.monotonic() - t0, label, ", ".join(map(str, sizes)))
        stages = (
            (("generate", self._chunked_generate_loop),)
            if self.chunked
            else (
                ("prefill", self._prefill_loop),
                ("transfer", self._transfer_loop),
                ("generate", self._generate_loop),
            )
        )
        if self.chunked:
            log.info(
                "Chunked prefill: prompts run inside the generate steps (up to %d token rows a step).",
                max(self.engine.settings.max_step_tokens, self.max_slots),
            )
        for stage, target in (*stages, ("detokenize", self._detokenize_loop)):
            log.info("Spinning up %s thread 0.", stage)
            thread = threading.Thread(target=self._guard(stage, target), name=f"{stage}-0", daemon=True)
            self._threads.append(thread)
            thread.start()
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
        if request.max_tokens < 1:
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
            batch, carry = self._gather_prefill_batch(job)
            self._prefill(batch)

    def _gather_prefill_batch(self, first: Job) -> tuple[list[Job], Job | None]:
        """`first` plus prompts already waiting in its length bucket, as many as the engine batches.

        Only jobs whose credit is free right now join (never waiting here); a job of another
        bucket ends the batch and is returned to be prefilled next, so order is kept.
        """
        rows_for = getattr(self.engine, "prefill_batch_rows", None)
        bucket_of = getattr(self.engine, "prefill_bucket", None)
        if rows_for is None or bucket_of is None or not hasattr(self.engine, "prefill_many"):
            return [first], None
        bucket = bucket_of(len(first.request.prompt_ids))
        limit = rows_for(bucket)
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
            if bucket_of(len(job.request.prompt_ids)) != bucket:
                self._credits.release()
                return batch, job
            job.holds_credit = True
            batch.append(job)
        return batch, None

    def _prefill(self, batch: list[Job]) -> None:
        """Prefill jobs (holding credits) together; a failing batch is retried job by job, so an
        exception fails only the request that caused it."""
        try:
            t0 = time.monotonic()
            with self._holding(self._prefill_lock):
                if len(batch) == 1:
                    prefixes = [self.engine.prefill(batch[0].request.prompt_ids, batch[0].request.sampling)]
                else:
                    prefixes = self.engine.prefill_many(  # type: ignore[attr-defined]
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
            self._put(self._detok, FirstToken(job, int(prefix.first_token)))
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

    def _generate_loop(self) -> None:
        while not self._stopping.is_set():
            self._release_finished()
            self._insert_waiting(block=self.active_slots == 0)
            active = tuple((slot, job) for slot, job in enumerate(self._slots) if job is not None)
            if not active:
                continue
            t0 = time.monotonic()
            with self._holding(self._generate_lock):
                out = self.engine.generate()
            self._last_step = StepTokens(out.tokens, active, t0)
            self._put(self._detok, self._last_step)
            for slot, job in active:
                job.scheduled += 1
                if job.scheduled >= job.request.max_tokens:
                    self._release(slot)  # its last token is computed; the slot can take a new job

    def _chunked_generate_loop(self) -> None:
        """Admit prompts into free slots, then one mixed step (decode rows + prompt chunks)."""
        while not self._stopping.is_set():
            self._release_finished()
            self._add_prompts(block=self.active_slots == 0)
            if not self.active_slots:
                continue
            t0 = time.monotonic()
            out = self.engine.generate()
            emitted = tuple(range(self.max_slots)) if out.slots is None else out.slots
            step = StepTokens(
                out.tokens, tuple((slot, job) for slot in emitted if (job := self._slots[slot]) is not None), t0
            )
            self._put(self._detok, step)
            for slot, job in step.slots:
                job.scheduled += 1
                if job.scheduled >= job.request.max_tokens:
                    self._release(slot)

    def _add_prompts(self, block: bool) -> None:
        """Give waiting requests free slots, in arrival order, while the KV cache can hold them;
        their prompts run in the coming steps."""
        while None in self._slots:
            job = self._held
            if job is None:
                try:
                    job = self._admission.get(timeout=_POLL_S) if block else self._admission.get_nowait()
                except queue.Empty:
                    return
            self._held = None
            block = False
            if job is None:
                return
            if job.finished:
                continue
            req = job.request
            if not self.engine.can_admit(req.prompt_ids, req.max_tokens):  # type: ignore[attr-defined]
                self._held = job  # first in line once running requests free blocks
                return
            slot = self._slots.index(None)
            try:
                self.engine.add_prompt(slot, req.prompt_ids, req.sampling, req.max_tokens)  # type: ignore[attr-defined]
            except Exception as exc:
                log.exception("[%s] prefill failed", job.id)
                job.fail(f"Prefill failed: {type(exc).__name__}: {exc}")
                continue
            self._slots[slot] = job
            self.metrics.prompt_tokens.inc(len(job.request.prompt_ids))
            log.debug("[%s] prefilling in slot %d", job.id, slot)

    def _detokenize_loop(self) -> None:
        last_host_at = 0.0
        while not self._stopping.is_set():
            msg = self._get(self._detok)
            if msg is None:
                continue
            if isinstance(msg, FirstToken):
                self._deliver(msg.job, msg.token)
                continue
            host = msg.host()  # waits for the step; the next one is already dispatched
            now = time.monotonic()
            self.metrics.decode_step.observe(now - max(msg.dispatched_at, last_host_at))
            last_host_at = now
            for slot, job in msg.slots:
                self._deliver(job, int(host[slot]))

    # ----- helpers ----------------------------------------------------------------------------

    def _deliver(self, job: Job, token: int) -> None:
        try:
            job.accept_token(token)
        except Exception as exc:
            log.exception("[%s] detokenization failed", job.id)
            job.fail(f"Detokenization failed: {type(exc).__name__}: {exc}")

    def _insert_waiting(self, block: bool) -> None:
        """Move waiting prefixes into free slots (blocking briefly when there is nothing to do)."""
        while None in self._slots:
            try:
                item = self._ready.get(timeout=_POLL_S) if block else self._ready.get_nowait()
            except queue.Empty:
                return
            block = False
            if item is None:
                return
            job = item.job
            if job.finished or job.request.max_tokens <= 1:
                self._return_credit(job)  # done with its first token (or gone): no slot needed
                continue
            slot = self._slots.index(None)
            if self._last_step is not None:
                self._last_step.host()  # before the engine may donate that buffer
                self._last_step = None
            try:
                self.engine.insert(item.prefix, slot)
            except Exception as exc:
                log.exception("[%s] insert into slot %d failed", job.id, slot)
                job.fail(f"Insert failed: {type(exc).__name__}: {exc}")
                self._slots[slot] = job
                self._release(slot)
                continue
            job.scheduled = 1  # the first token came from prefill
            self._slots[slot] = job
            log.debug("[%s] inserted into slot %d", job.id, slot)

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

    def _guard(self, stage: str, loop: Any) -> Any:
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
