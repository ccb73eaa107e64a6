"""Fixtures shared by the inference_app tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.inference_app.tiny_llama import make_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random Llama-3.1-style HF checkpoint of tiny_llama.py, written once per session
    (transformers + torch take most of a minute to import and save it here)."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))
