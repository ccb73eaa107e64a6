"""Orchestrator behaviour against the strict FakeEngine: batching, stops, limits, faults, cancel."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from inference_app.engine.api import (
    BatchedPrefill,
    ChunkedPrefill,
    Engine,
    EngineSettings,
    Prefix,
    SamplingParams,
    StepOutput,
    batched_prefill,
    chunked_prefill,
    prompt_scoring,
    token_masks,
)
from inference_app.orchestrator import (
    BadRequest,
    Event,
    Failed,
    Finished,
    GenerationRequest,
    Orchestrator,
    PromptLogprobs,
    QueueFull,
    TextDelta,
    Unavailable,
)
from inference_app.orchestrator.detokenize import IncrementalDecoder, StopStringFilter
from inference_app.orchestrator.pipeline import STEPS_AHEAD
from inference_app.testing.faults import FaultInjectingEngine, InjectedFault, parse_fault_spec
from tests.inference_app.fakes import (
    CORPUS,
    CORPUS_IDS,
    EOS,
    ByteTokenizer,
    FakeEngine,
    expected_ids,
    fake_logprobs,
)


class Collector:
    """A sink that records events and signals when the final one arrives."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.done = threading.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, Finished | Failed):
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TextDelta))

    @property
    def final(self) -> Event:
        assert self.done.wait(10), "request did not finish"
        return self.events[-1]


def make(engine: FakeEngine | FaultInjectingEngine, max_queue: int = 64) -> Orchestrator:
    orch = Orchestrator(engine, max_queue=max_queue)
    orch.start()
    return orch


@pytest.fixture(params=["separate-prefill", "chunked-prefill"])
def engine(request: pytest.FixtureRequest) -> FakeEngine:
    """Both pipelines: prefill/transfer/insert stages, and prompts run inside the decode steps."""
    return FakeEngine(step_delay=0.001, chunked_prefill=request.param == "chunked-prefill")


@pytest.fixture
def orch(engine: FakeEngine) -> Iterator[Orchestrator]:
    o = make(engine)
    yield o
    o.stop()


def req(
    prompt: str, max_tokens: int = 12, sampling: SamplingParams | None = None, ignore_eos: bool = False
) -> GenerationRequest:
    return GenerationRequest(
        tuple(prompt.encode()), max_tokens, sampling=sampling or SamplingParams(), ignore_eos=ignore_eos
    )


def decode(ids: list[int]) -> str:
    return ByteTokenizer().decode([i for i in ids if i != EOS])


def assert_served_like_alone(prompts: list[str], sinks: list[Collector], max_tokens: int) -> None:
    for p, s in zip(prompts, sinks, strict=True):
        assert isinstance(s.final, Finished), s.final
        want = expected_ids(tuple(p.encode()), max_tokens)
        assert s.text == decode(want[: want.index(EOS)] if EOS in want else want)


# ----- detokenization ------------------------------------------------------------------------


def test_incremental_decoder_never_emits_partial_characters() -> None:
    dec = IncrementalDecoder(ByteTokenizer())
    text = "naïve 🙂 café ☕ end"
    pieces = [dec.add(b) for b in text.encode()]
    assert "".join(pieces) + dec.flush() == text
    assert all("\ufffd" not in p for p in pieces)
    # the 4 bytes of the emoji produce nothing until the last one
    emoji_at = text.encode().index("🙂".encode())
    assert pieces[emoji_at : emoji_at + 3] == ["", "", ""] and pieces[emoji_at + 3] == "🙂"


def test_stop_filter_holds_back_a_possible_stop_and_cuts_before_it() -> None:
    f = StopStringFilter(["STOP", "\n\n"])
    out = [f.feed(c) for c in "abc ST"]
    assert "".join(out) == "abc "  # "ST" may begin "STOP": held back
    assert f.feed("x") == "STx" and not f.stopped  # not a stop after all: released
    assert f.feed("yST") == "y"
    assert f.feed("OP tail") == "" and f.stopped
    g = StopStringFilter(["STOP"])
    assert g.feed("ends with ST") == "ends with " and g.flush() == "ST"


# ----- generation ----------------------------------------------------------------------------


def test_more_requests_than_slots_all_complete_like_alone(engine: FakeEngine, orch: Orchestrator) -> None:
    prompts = [f"prompt number {i} " + "x" * (i * 3) for i in range(13)]
    sinks = [Collector() for _ in prompts]
    for p, s in zip(prompts, sinks, strict=True):
        orch.submit(req(p, max_tokens=5 + len(p) % 17), s)
    for p, s in zip(prompts, sinks, strict=True):
        final = s.final
        assert isinstance(final, Finished), final
        want = expected_ids(tuple(p.encode()), 5 + len(p) % 17)
        assert s.text == decode(want[: want.index(EOS)] if EOS in want else want)
        assert final.completion_tokens == len(want)
    assert engine.max_active == engine.max_slots  # continuous batching filled every slot
    assert orch.wait_idle(5) and orch.active_slots == 0


def test_finish_reasons_length_eos_and_stop_string(orch: Orchestrator) -> None:
    # length
    s = Collector()
    orch.submit(req("abc", max_tokens=7), s)
    assert isinstance(s.final, Finished) and s.final.reason == "length" and s.final.completion_tokens == 7
    # EOS: choose a prompt whose continuation starts 5 tokens before the end of the corpus
    p = _prompt_starting_at(len(CORPUS_IDS) - 5)
    s = Collector()
    orch.submit(GenerationRequest(p, max_tokens=50), s)
    assert isinstance(s.final, Finished) and s.final.reason == "stop"
    assert s.final.completion_tokens == 5 and s.text == decode(list(CORPUS_IDS[-5:-1]))
    # stop string: the corpus contains "STOP"; the text ends right before it
    p = _prompt_starting_at(CORPUS.encode().index(b"STOP") - 10)
    s = Collector()
    orch.submit(GenerationRequest(p, max_tokens=40, stop=("STOP",)), s)
    assert isinstance(s.final, Finished) and s.final.reason == "stop"
    assert s.text == CORPUS.encode()[CORPUS.encode().index(b"STOP") - 10 :].split(b"STOP")[0].decode()


def test_max_tokens_1_needs_no_slot(engine: FakeEngine, orch: Orchestrator) -> None:
    inserts = engine.inserts
    s = Collector()
    orch.submit(req("one", max_tokens=1), s)
    assert isinstance(s.final, Finished) and s.final.completion_tokens == 1 and s.final.reason == "length"
    assert s.text == decode(expected_ids(tuple(b"one"), 1))
    assert orch.wait_idle(5) and engine.inserts == inserts


def test_new_prompts_are_prefilled_while_long_requests_decode(engine: FakeEngine) -> None:
    """Interleaving: a new request's first token does not wait for the running ones to finish."""
    engine.step_delay = 0.005
    orch = make(engine)
    try:
        long = [Collector() for _ in range(3)]
        for i, s in enumerate(long):
            orch.submit(req(f"long {i}", 150, ignore_eos=True), s)
        _wait(lambda: orch.active_slots == 3)
        steps_at_submit = engine.steps
        short = Collector()
        orch.submit(req("short", 3), short)
        assert isinstance(short.final, Finished)
        assert engine.steps - steps_at_submit < 20  # served within a few steps, not after 150
        assert not any(s.done.is_set() for s in long)  # the long ones are still decoding
    finally:
        orch.stop()


def test_ignore_eos_generates_past_eos(orch: Orchestrator) -> None:
    p = _prompt_starting_at(len(CORPUS_IDS) - 3)
    s = Collector()
    orch.submit(GenerationRequest(p, max_tokens=10, ignore_eos=True), s)
    assert isinstance(s.final, Finished) and s.final.reason == "length" and s.final.completion_tokens == 10


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(orch: Orchestrator) -> None:
    outs = []
    for seed in (7, 7, None):
        s = Collector()
        sampling = SamplingParams(temperature=0.8, seed=seed) if seed else SamplingParams()
        orch.submit(req("same prompt", 10, sampling=sampling), s)
        assert isinstance(s.final, Finished)
        outs.append(s.text)
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_limits_are_400_with_the_number(orch: Orchestrator) -> None:
    with pytest.raises(BadRequest, match=r"at most 64 \(--max-prefill-length\)"):
        orch.submit(req("y" * 65), Collector())
    with pytest.raises(BadRequest, match=r"at most 100 new tokens are possible"):
        orch.submit(req("z" * 60, max_tokens=101), Collector())
    with pytest.raises(BadRequest, match="empty"):
        orch.submit(GenerationRequest((), 5), Collector())
    with pytest.raises(BadRequest, match="max_tokens must be >= 1"):
        orch.submit(req("a", max_tokens=0), Collector())
    # exactly at the room is fine, and the fake engine would raise if we decoded past it
    s = Collector()
    orch.submit(req("w" * 60, max_tokens=100, ignore_eos=True), s)
    assert isinstance(s.final, Finished) and s.final.completion_tokens == 100


class _RunningStep:
    """A step's tokens that exist only once the (fake) device finishes it."""

    def __init__(self, tokens: np.ndarray, finished: threading.Event) -> None:
        self.tokens, self.finished = tokens, finished

    def block_until_ready(self) -> _RunningStep:
        self.finished.wait()
        return self

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        self.finished.wait()
        return np.asarray(self.tokens)


class StalledDevice(FakeEngine):
    """Steps dispatch at once but finish only when `finished` is set, like async device steps."""

    def __init__(self) -> None:
        super().__init__(chunked_prefill=True)
        self.finished = threading.Event()
        self.dispatched = 0

    def generate(self) -> StepOutput:
        out = super().generate()
        self.dispatched += 1
        return dataclasses.replace(out, tokens=_RunningStep(out.tokens, self.finished))


def test_the_generate_loop_runs_at_most_two_steps_ahead_of_the_device() -> None:
    """A prompt admitted now runs after every step already dispatched: a deep run-ahead (the
    detokenize queue's 4 and one more) made a wave of new requests wait ~5 steps."""
    engine = StalledDevice()
    orch = make(engine)
    try:
        sink = Collector()
        orch.submit(req("ahead", 20, ignore_eos=True), sink)
        _wait(lambda: engine.dispatched >= STEPS_AHEAD + 1)
        time.sleep(0.2)  # room to run further ahead, were it allowed
        assert engine.dispatched == STEPS_AHEAD + 1  # the last waits for the first to finish
        engine.finished.set()
        assert isinstance(sink.final, Finished) and sink.final.completion_tokens == 20
    finally:
        engine.finished.set()
        orch.stop()


def test_requests_that_find_free_slots_wait_for_no_completion(engine: FakeEngine) -> None:
    orch = make(engine)
    try:
        assert orch.active_slots == 0
        assert orch.waiting_for_slot(arriving=engine.max_slots) == 0
        assert orch.waiting_for_slot(arriving=engine.max_slots + 3) == 3
    finally:
        orch.stop()


def test_queue_full_is_rejected_not_buffered(engine: FakeEngine) -> None:
    orch = make(engine, max_queue=2)
    try:
        engine.gate.clear()  # decoding blocked: slots stay busy
        accepted, rejected = 0, 0
        for i in range(20):
            try:
                orch.submit(req(f"q{i}", 5), Collector())
                accepted += 1
            except QueueFull as exc:
                rejected += 1
                assert exc.status == 429 and exc.retry_after == 1
            if i == 0:
                _wait(engine.held.is_set)  # the first request decodes: its step holds the device
        # slots + one prefilled lookahead + the queue bound; everything else refused
        assert accepted <= engine.max_slots + 1 + 2 and rejected >= 20 - (engine.max_slots + 3)
        assert orch.metrics.requests.labels(outcome="rejected_queue_full")._value.get() == rejected

        # Gauges are read at scrape time, not at start-up. Interleaved, the held step keeps the
        # device, so prefill takes at most one more prompt and the queue stays non-empty.
        def scrape_shows_depth() -> bool:
            depth = orch.queue_depth
            scraped = orch.metrics.render().decode()
            return depth == orch.queue_depth and f"inference_queue_depth {float(depth)}" in scraped

        _wait(scrape_shows_depth)
        assert orch.queue_depth >= 1
        assert f"inference_requests_in_flight {float(accepted)}" in orch.metrics.render().decode()
    finally:
        engine.gate.set()
        orch.stop()


def test_cancel_frees_the_slot_within_a_step(engine: FakeEngine) -> None:
    engine.step_delay = 0.01
    orch = make(engine)
    try:
        sinks = [Collector() for _ in range(4)]
        jobs = [orch.submit(req(f"long {i}", 150, ignore_eos=True), s) for i, s in enumerate(sinks)]
        _wait(lambda: orch.active_slots == 4)
        steps_before = engine.steps
        assert jobs[0].cancel()
        _wait(lambda: orch.active_slots == 3)
        assert engine.steps - steps_before <= 2
        assert isinstance(sinks[0].final, Finished) and sinks[0].final.reason == "cancelled"
        s = Collector()
        orch.submit(req("after cancel", 5), s)  # takes the freed slot
        assert isinstance(s.final, Finished) and s.final.reason == "length"
        for j in jobs[1:]:
            j.cancel()
        assert orch.wait_idle(5)
        assert orch.metrics.requests.labels(outcome="cancelled")._value.get() == 4
    finally:
        orch.stop()


def test_error_in_one_request_fails_only_that_request(engine: FakeEngine) -> None:
    for stage in ("prefill", "insert"):
        orch = make(FaultInjectingEngine(engine, stage, "BOOM"))
        try:
            ok, bad = Collector(), Collector()
            orch.submit(req("fine prompt", 6), ok)
            orch.submit(req("this has BOOM in it", 6), bad)
            assert isinstance(bad.final, Failed) and bad.final.status == 500
            assert f"injected fault in {stage}" in bad.final.message
            assert isinstance(ok.final, Finished)
            after = Collector()
            orch.submit(req("still serving", 6), after)
            assert isinstance(after.final, Finished) and orch.ready and orch.failure is None
            assert orch.wait_idle(5) and orch.active_slots == 0
        finally:
            orch.stop()


def batching_engine(prefill_delay: float = 0.05) -> FakeEngine:
    settings = EngineSettings(max_slots=4, max_prefill_length=64, max_target_length=160, max_prefill_batch=4)
    return FakeEngine(settings=settings, step_delay=0.001, prefill_delay=prefill_delay)


def test_waiting_prompts_of_one_bucket_are_prefilled_together() -> None:
    engine = batching_engine()
    orch = make(engine)
    try:
        prompts = [f"prompt {i}" for i in range(9)]  # one bucket (16)
        sinks = [Collector() for _ in prompts]
        for p, s in zip(prompts, sinks, strict=True):
            orch.submit(req(p, max_tokens=8), s)
        assert_served_like_alone(prompts, sinks, 8)
        assert engine.batch_sizes and max(engine.batch_sizes) > 1  # queued prompts joined a batch
        assert max(engine.batch_sizes) <= 4 and engine.prefills == 9
        assert orch.wait_idle(5) and orch.active_slots == 0
    finally:
        orch.stop()


def test_prompts_of_other_buckets_are_not_batched_and_keep_their_order() -> None:
    engine = batching_engine()
    orch = make(engine)
    try:
        prompts = ["short 1", "x" * 40, "short 2", "short 3", "y" * 20]  # buckets 16, 64, 16, 16, 32
        sinks = [Collector() for _ in prompts]
        for p, s in zip(prompts, sinks, strict=True):
            orch.submit(req(p, max_tokens=5), s)
        assert_served_like_alone(prompts, sinks, 5)
        assert engine.prefills == len(prompts)  # prefill_many raises on mixed buckets: none were
    finally:
        orch.stop()


def test_a_failing_batch_fails_only_the_request_that_caused_it(caplog: pytest.LogCaptureFixture) -> None:
    inner = batching_engine()
    orch = make(FaultInjectingEngine(inner, "prefill", "BOOM"))
    try:
        names = ["ok one", "has BOOM", "ok two", "ok three"]
        sinks = [Collector() for _ in names]
        for p, s in zip(names, sinks, strict=True):
            orch.submit(req(p, max_tokens=6), s)
        finals = [s.final for s in sinks]
        assert isinstance(finals[1], Failed) and "injected fault in prefill" in finals[1].message
        assert all(isinstance(f, Finished) for i, f in enumerate(finals) if i != 1)
        assert "retrying one by one" in caplog.text  # the marked prompt was in a batch
        assert orch.ready and orch.failure is None
        assert orch.wait_idle(5) and orch.active_slots == 0
    finally:
        orch.stop()


def test_device_loop_failure_fails_in_flight_and_turns_unready(engine: FakeEngine) -> None:
    orch = make(FaultInjectingEngine(engine, "generate", "CRASH"))
    try:
        s = Collector()
        orch.submit(req("CRASH now", 20), s)
        assert isinstance(s.final, Failed) and "device loop failed" in s.final.message
        assert not orch.ready and orch.failure and "generate stage crashed" in orch.failure
        with pytest.raises(Unavailable, match="device loop failed"):
            orch.submit(req("next", 3), Collector())
    finally:
        orch.stop()


def test_fault_spec_parsing() -> None:
    assert parse_fault_spec("prefill:X Y") == ("prefill", "X Y")
    for bad in ("prefill", "decode:X", "insert:"):
        with pytest.raises(ValueError, match="STAGE:MARKER"):
            parse_fault_spec(bad)


def test_not_admitting_before_start_and_while_draining() -> None:
    orch = Orchestrator(FakeEngine())
    with pytest.raises(Unavailable):
        orch.submit(req("early"), Collector())
    orch.start()
    try:
        s = Collector()
        orch.submit(req("in flight", 30, ignore_eos=True), s)
        orch.begin_drain()
        with pytest.raises(Unavailable, match="draining"):
            orch.submit(req("late"), Collector())
        assert orch.wait_idle(5) and isinstance(s.final, Finished)  # in-flight work finishes
    finally:
        orch.stop()


def test_disaggregated_mode_runs_prefill_and_decode_unlocked() -> None:
    settings = EngineSettings(mode="disaggregated", max_slots=2, max_prefill_length=64, max_target_length=160)
    orch = make(FakeEngine(settings=settings))
    try:
        assert orch._prefill_lock is None and orch._generate_lock is None
        sinks = [Collector() for _ in range(5)]
        for i, s in enumerate(sinks):
            orch.submit(req(f"d{i}", 8), s)
        assert all(isinstance(s.final, Finished) for s in sinks)
    finally:
        orch.stop()


def _prompt_starting_at(start: int) -> tuple[int, ...]:
    """A prompt whose greedy continuation begins at CORPUS_IDS[start] (see fakes.continuation_start)."""
    for n in range(1, 400):
        for c in range(32, 127):
            ids = (c,) * n
            if (sum(ids) + n) % len(CORPUS_IDS) == start:
                return ids
    raise AssertionError("no prompt found")


def _wait(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.002)
    raise AssertionError("condition not reached")


# ----- the engine contract: optional capabilities, checked once ---------------------------------


class PlainEngine:
    """Only the core `Engine` protocol (no `prefill_many`, no `add_prompt`), over a FakeEngine."""

    def __init__(self, inner: FakeEngine) -> None:
        self.inner = inner
        self.settings = inner.settings
        self.tokenizer = inner.tokenizer
        self.mode = inner.mode
        self.max_slots = inner.max_slots
        self.max_prefill_length = inner.max_prefill_length
        self.max_target_length = inner.max_target_length
        self.prefill_buckets = inner.prefill_buckets

    def prefill(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> Prefix:
        return self.inner.prefill(prompt_ids, sampling)

    def transfer(self, prefix: Prefix) -> Prefix:
        return self.inner.transfer(prefix)

    def insert(self, prefix: Prefix, slot: int) -> None:
        self.inner.insert(prefix, slot)

    def generate(self) -> StepOutput:
        return self.inner.generate()

    def release(self, slot: int) -> None:
        self.inner.release(slot)

    def warmup(self) -> None:
        self.inner.warmup()


def test_an_engine_without_optional_capabilities_is_served_by_single_prefills() -> None:
    plain = PlainEngine(batching_engine(prefill_delay=0.01))
    assert isinstance(plain, Engine)
    assert not isinstance(plain, BatchedPrefill) and not isinstance(plain, ChunkedPrefill)
    orch = make(plain)
    try:
        prompts = [f"plain {i}" for i in range(6)]
        sinks = [Collector() for _ in prompts]
        for p, s in zip(prompts, sinks, strict=True):
            orch.submit(req(p, max_tokens=6), s)
        assert_served_like_alone(prompts, sinks, 6)
        assert plain.inner.batch_sizes == [] and plain.inner.prefills == 6  # never prefill_many
    finally:
        orch.stop()


@pytest.mark.parametrize("chunked", [False, True])
def test_capabilities_pick_the_path_and_the_fault_wrapper_mirrors_them(chunked: bool) -> None:
    fake = FakeEngine(chunked_prefill=chunked)
    wrapped = FaultInjectingEngine(fake, "generate", "X")
    for engine in (fake, wrapped):
        assert batched_prefill(engine) is engine
        assert (chunked_prefill(engine) is engine) is chunked
    with pytest.raises(TypeError, match="cannot be wrapped"):
        FaultInjectingEngine(PlainEngine(fake), "prefill", "X")


class MaskingEngine(FakeEngine):
    """A FakeEngine with the TokenMasks capability (its masks are recorded, not applied)."""

    mask_vocab = 256

    def __init__(self) -> None:
        super().__init__()
        self.masks: dict[int, object] = {}

    def set_token_mask(self, slot: int, bitmask: object) -> None:
        self.masks[slot] = bitmask

    def prefill_masked(
        self, prompts: Sequence[Sequence[int]], samplings: Sequence[SamplingParams], bitmasks: object
    ) -> list[Prefix]:
        return self.prefill_many(prompts, samplings)


def test_the_fault_wrapper_has_token_masks_and_prompt_scoring_exactly_when_its_engine_does() -> None:
    plain, masking = FakeEngine(), MaskingEngine()
    assert token_masks(plain) is None and prompt_scoring(plain) is plain
    wrapped_plain = FaultInjectingEngine(plain, "prefill", "BOOM")
    assert token_masks(wrapped_plain) is None and prompt_scoring(wrapped_plain) is wrapped_plain
    wrapped = FaultInjectingEngine(masking, "prefill", "BOOM")
    masks, scoring = token_masks(wrapped), prompt_scoring(wrapped)
    assert masks is wrapped and scoring is wrapped
    assert scoring.score_prompt(list(b"ab"), 1) == plain.score_prompt(list(b"ab"), 1)
    none = np.zeros((1, 8), np.int32)
    assert len(masks.prefill_masked([list(b"fine")], [SamplingParams()], none)) == 1
    row = none[0]
    masks.set_token_mask(0, row)
    assert list(masking.masks) == [0] and masking.masks[0] is row and masks.mask_vocab == 256
    with pytest.raises(InjectedFault, match="prefill"):
        masks.prefill_masked([list(b"fine"), list(b"a BOOM")], [SamplingParams()] * 2, np.repeat(none, 2, 0))


def test_requests_wait_for_kv_blocks_in_arrival_order_and_all_finish() -> None:
    """Chunked prefill over a paged cache: free slots are not enough, the request's KV must fit.
    Each request here reserves 20 + 30 tokens of a 60-token cache, so they run one at a time."""
    engine = FakeEngine(step_delay=0.001, chunked_prefill=True, kv_tokens=60)
    orch = make(engine)
    try:
        prompts = [f"prompt number {i:05d}" for i in range(3)]  # 20 bytes each
        sinks = [Collector() for _ in prompts]
        for p, s in zip(prompts, sinks, strict=True):
            orch.submit(req(p, max_tokens=30, ignore_eos=True), s)
        for s in sinks:
            assert isinstance(s.final, Finished), s.final
        assert engine.max_active == 1 and engine.prefills == 3  # never two at once, none refused
        assert orch.wait_idle(5) and orch.active_slots == 0 and not engine._reserved
    finally:
        orch.stop()


# ----- log-probabilities -----------------------------------------------------------------------


def test_each_token_comes_with_its_logprobs_when_asked(orch: Orchestrator) -> None:
    asked, plain = Collector(), Collector()
    orch.submit(req("caf\u00e9 log", max_tokens=10, sampling=SamplingParams(logprobs=2)), asked)
    orch.submit(req("caf\u00e9 log", max_tokens=10), plain)
    assert isinstance(asked.final, Finished) and isinstance(plain.final, Finished)
    deltas = [e for e in asked.events if isinstance(e, TextDelta)]
    tokens = [lp.token for d in deltas for lp in d.logprobs]
    want = expected_ids(tuple("caf\u00e9 log".encode()), 10)
    assert tokens == want  # every token (EOS too), in order, whatever the text held back
    assert all(lp == fake_logprobs(lp.token, 2) for d in deltas for lp in d.logprobs)
    assert asked.text == plain.text
    assert all(not e.logprobs for e in plain.events if isinstance(e, TextDelta))


def test_prompt_logprobs_come_first_and_max_tokens_0_only_scores(orch: Orchestrator) -> None:
    prompt = tuple(b"score me")
    scored, only = Collector(), Collector()
    orch.submit(GenerationRequest(prompt, 3, prompt_logprobs=1), scored)
    orch.submit(GenerationRequest(prompt, 0, prompt_logprobs=0), only)
    for sink in (scored, only):
        first = sink.events[0] if sink.done.wait(10) else None
        assert isinstance(first, PromptLogprobs)
        assert [lp.token for lp in first.tokens] == list(prompt[1:])
    assert isinstance(scored.final, Finished) and scored.final.completion_tokens == 3
    assert only.events[1:] == [Finished("length", len(prompt), 0)]
    with pytest.raises(BadRequest, match="max_tokens must be >= 1"):
        orch.submit(GenerationRequest(prompt, 0), Collector())


def test_a_request_that_only_scores_its_prompt_waits_for_no_kv_blocks() -> None:
    """Echo with max_tokens 0 (lm-eval's loglikelihood) reads no KV cache: a prompt longer than the
    free KV blocks is still scored at once."""
    engine = FakeEngine(step_delay=0.001, chunked_prefill=True, kv_tokens=10)
    orch = make(engine)
    try:
        prompt = tuple(b"a prompt of thirty bytes, long")
        sink = Collector()
        orch.submit(GenerationRequest(prompt, 0, prompt_logprobs=0), sink)
        assert sink.done.wait(5), "the scoring request waited for KV blocks"
        first = sink.events[0]
        assert isinstance(first, PromptLogprobs) and [lp.token for lp in first.tokens] == list(prompt[1:])
        assert sink.events[1:] == [Finished("length", len(prompt), 0)]
    finally:
        orch.stop()
