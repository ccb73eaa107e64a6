"""Fixtures shared by the inference_app tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.inference_app.serving_cases import OFFLINE, SMOLLM2_SERVER_ARGS, ServerProcess
from tests.inference_app.tiny_llama import make_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random Llama-3.1-style HF checkpoint of tiny_llama.py, written once per session
    (transformers + torch take most of a minute to import and save it here)."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


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
