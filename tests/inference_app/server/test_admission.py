"""Admission helpers in process: cheap prompt limits, the tokenization pool, the queue-time budget."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from inference_app.model.tokenizer import TextTokenizer
from inference_app.model.weights_gguf import GGUFCheckpoint, gguf_tokenizer
from inference_app.models import embedded_model_path
from inference_app.orchestrator import ServingMetrics, Unavailable
from inference_app.orchestrator.request import BadRequest
from inference_app.server.admission import PromptLimits, QueueBudget, Tokenization, longest_token_chars
from tests.inference_app.fakes import ByteTokenizer

TEXTS = ["Hello world", " " * 300, "-" * 500, "日本語のテキスト" * 50, "1234567890" * 40, "a" * 1000]


@pytest.fixture(scope="module")
def smollm2() -> TextTokenizer:
    return gguf_tokenizer(GGUFCheckpoint(str(embedded_model_path("smollm2-135m"))))


def test_character_bound_never_refuses_a_prompt_that_fits(smollm2: TextTokenizer) -> None:
    longest = longest_token_chars(smollm2)
    assert 1 < longest < 1000
    for text in TEXTS:
        assert len(text) <= len(smollm2.encode(text)) * longest  # so chars > limit * longest => tokens > limit
    limits = PromptLimits(smollm2, max_prefill_length=512)
    for text in TEXTS:
        limits.check_text(text)


def test_cheap_limits_refuse_without_tokenizing() -> None:
    limits = PromptLimits(ByteTokenizer(), max_prefill_length=64)
    assert limits.max_chars == 64
    with pytest.raises(BadRequest, match="characters") as exc:
        limits.check_text("x" * 1_000_000)
    assert exc.value.param == "prompt"
    with pytest.raises(BadRequest, match="65 messages"):
        limits.check_messages(["a"] * 65)
    with pytest.raises(BadRequest) as exc:
        limits.check_messages(["a" * 40, "b" * 40])
    assert exc.value.param == "messages"


def test_tokenization_runs_off_the_event_loop() -> None:
    pool = Tokenization()

    async def main() -> str:
        return await pool.run(lambda: threading.current_thread().name)

    try:
        assert asyncio.run(main()).startswith("tokenize")
    finally:
        pool.close()


def test_queue_budget_refuses_only_past_the_expected_wait() -> None:
    metrics = ServingMetrics()
    budget = QueueBudget(1.0, metrics)
    budget.check(queued=50)  # no completion rate yet: admitted
    time.sleep(1.05)
    metrics.requests.labels(outcome="ok").inc(2)  # ~2 requests per second
    budget.check(queued=1)  # ~0.5 s
    with pytest.raises(Unavailable, match="--max-queue-wait") as exc:
        budget.check(queued=6)  # ~3 s
    assert exc.value.status == 503 and exc.value.retry_after is not None and exc.value.retry_after >= 1
