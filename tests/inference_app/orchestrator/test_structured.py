"""Structured outputs through the orchestrator, on the tiny random Llama (SmolLM2's tokenizer, so
the grammar engine reads a real vocabulary; random weights, so only the masks make its output JSON):
a constrained request ends with "stop" the moment its JSON is complete, valid against its schema,
whichever prefill path samples its first token; a token the grammar rejects fails the request with
a 500 and a log line, never passes; an engine without token masks refuses grammars at admission."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from inference_app.engine import EngineSettings, SamplingParams
from inference_app.engine.engine import JaxEngine, model_for
from inference_app.model.loader import LoadedModel
from inference_app.orchestrator import BadRequest, Failed, Finished, GenerationRequest, Orchestrator
from inference_app.orchestrator.grammar import GrammarMatcher, GrammarSpec
from tests.inference_app.fakes import FakeEngine
from tests.inference_app.orchestrator.test_orchestrator import Collector

BASE = EngineSettings(max_slots=2, max_prefill_length=32, max_target_length=96, max_step_tokens=16)
SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["ok", "n"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def model(tiny_llama_dir: Path) -> LoadedModel:
    return model_for(dataclasses.replace(BASE, model=None, model_path=str(tiny_llama_dir)))


@pytest.fixture(scope="module", params=[True, False], ids=["chunked", "separate"])
def orchestrator(request: pytest.FixtureRequest, model: LoadedModel) -> Iterator[Orchestrator]:
    settings = dataclasses.replace(BASE, model=None, model_path="tiny", chunked_prefill=request.param)
    engine = JaxEngine(settings, model)
    if request.param and not engine.chunked_prefill:
        pytest.skip("chunked prefill needs the CPU kernels")
    orch = Orchestrator(engine)
    orch.start(warmup=False)  # variants compile on first use
    yield orch
    orch.stop()


def run(orch: Orchestrator, request: GenerationRequest) -> Collector:
    sink = Collector()
    orch.submit(request, sink)
    assert sink.done.wait(300)
    return sink


def test_a_constrained_request_stops_when_its_json_is_complete(orchestrator: Orchestrator) -> None:
    ids = tuple(orchestrator.tokenizer.encode("Answer in JSON:"))
    grammar = GrammarSpec.json_schema(SCHEMA, strict=True)
    sampled = SamplingParams(temperature=0.8, seed=1)
    sink = run(orchestrator, GenerationRequest(ids, 40, sampled, grammar=grammar))
    end = sink.events[-1]
    assert isinstance(end, Finished) and end.reason == "stop" and end.completion_tokens < 40, sink.events
    jsonschema.validate(json.loads(sink.text), SCHEMA)
    unconstrained = run(orchestrator, GenerationRequest(ids, 8, sampled))
    assert not unconstrained.text.startswith('{"ok": ')  # the random model alone writes no such JSON


def test_a_rejected_token_fails_the_request_loudly(
    orchestrator: Orchestrator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(GrammarMatcher, "accept", lambda self, token: False)
    ids = tuple(orchestrator.tokenizer.encode("Answer in JSON:"))
    with caplog.at_level(logging.ERROR, logger="inference_app.orchestrator"):
        sink = run(orchestrator, GenerationRequest(ids, 8, grammar=GrammarSpec.json_object()))
    end = sink.events[-1]
    assert isinstance(end, Failed) and end.status == 500 and "grammar" in end.message
    assert "the grammar rejects token" in caplog.text


def test_an_engine_without_token_masks_refuses_grammars() -> None:
    orch = Orchestrator(FakeEngine())
    orch.start(warmup=False)
    try:
        with pytest.raises(BadRequest, match="token masks") as refused:
            orch.submit(GenerationRequest((1, 2), 4, grammar=GrammarSpec.json_object()), Collector())
        assert refused.value.param == "response_format"
    finally:
        orch.stop()
