"""Fixtures shared by the inference_app tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inference_app.engine import EngineSettings
from inference_app.engine.engine import model_for
from inference_app.model.loader import LoadedModel
from tests.inference_app.engine_runs import first_layers
from tests.inference_app.serving_cases import OFFLINE, SMOLLM2_SERVER_ARGS, ServerProcess
from tests.inference_app.tiny_llama import make_tiny_llama


@pytest.fixture(scope="session")
def torch() -> Any:
    """torch (the transformers references' framework), imported when a test first needs it. Imported
    at the top of a test module, it was imported by each pytest-xdist worker to collect the suite:
    in a fresh clone both workers at once, each compiling the same bytecode (torch and transformers
    took 26 s of CPU to import without their bytecode, 10 s with it)."""
    return pytest.importorskip("torch")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random Llama-3.1-style HF checkpoint of tiny_llama.py, written once per session
    (transformers + torch take most of a minute to import and save it here)."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """The embedded SmolLM2 with float32 weights (the path checked against transformers; the
    server's default keeps the GGUF's blocks), read once per worker: engines built from it place
    their own copy of the weights, so tests cannot disturb each other through it."""
    return model_for(EngineSettings(weight_dtype="float32"))


@pytest.fixture(scope="session")
def smollm2_4_layers(smollm2: LoadedModel) -> LoadedModel:
    """SmolLM2's first 4 layers (its tokenizer, embeddings and final norm). The unrolled layers are
    most of a step's compile time, so its engines build several times faster. For tests of what an
    engine compiles or how it lays out steps, and for comparisons of two paths on every token's
    logprobs (numbers that a misplaced KV row or a kernel slip changes). Its text is degenerate
    (", and, and"), so tests that compare tokens only use the full model."""
    return first_layers(smollm2, 4)


@pytest.fixture(scope="session")
def smollm2_server() -> Iterator[ServerProcess]:
    """The suite's one real-model server (serving_cases.SMOLLM2_SERVER_ARGS). Its users form one
    pytest-xdist group (tests/conftest.py), so one worker starts it once; it stops at the end of
    that worker's session."""
    srv = ServerProcess(SMOLLM2_SERVER_ARGS, env=OFFLINE)
    try:
        srv.wait_healthy(timeout=900)
        yield srv
    finally:
        srv.terminate()
