"""The real clients (openai, langchain-openai, litellm, guidellm, lm-eval), unmodified and with their
default settings, against the suite's one real `serve` process (`smollm2_server`). Nothing here may
download at run time, so the Hugging Face hub is off and tools that want a tokenizer get the
directory the model's own tokenizer exports.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference_app.model.catalog import embedded_model_path
from inference_app.model.weights_gguf import gguf_tokenizer, open_gguf
from tests.inference_app.serving_cases import OFFLINE, ServerProcess


@pytest.fixture(scope="package", autouse=True)
def offline() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in OFFLINE}
    os.environ.update(OFFLINE)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="package")
def server(smollm2_server: ServerProcess) -> ServerProcess:
    return smollm2_server


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = gguf_tokenizer(open_gguf(str(embedded_model_path("smollm2-135m"))))
    return tokenizer.save_pretrained(tmp_path_factory.mktemp("tokenizer"))
