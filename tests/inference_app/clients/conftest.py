"""One real `serve` process (embedded SmolLM2, default flags but small limits) for every client test.

The clients are the real packages (openai, langchain-openai, litellm, guidellm, lm-eval), unmodified
and with their default settings; nothing here may download at run time, so the Hugging Face hub is
off and tools that want a tokenizer get the directory the model's own tokenizer exports.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference_app.model.catalog import embedded_model_path
from inference_app.model.weights_gguf import GGUFCheckpoint, gguf_tokenizer
from tests.inference_app.serving_cases import ServerProcess

MAX_SLOTS, MAX_PREFILL, MAX_TARGET = 4, 256, 512
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "OPENAI_API_KEY": "unused",
}


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


@pytest.fixture(scope="package")  # stopped once the client tests are done, not at the end of the suite
def server() -> Iterator[ServerProcess]:
    args = [
        "serve",
        "--max-slots", str(MAX_SLOTS),
        "--max-prefill-length", str(MAX_PREFILL),
        "--max-target-length", str(MAX_TARGET),
        "--max-step-tokens", "64",  # fewer step shapes to compile before healthy; prompts are short
    ]  # fmt: skip
    srv = ServerProcess(args, env=OFFLINE)
    try:
        srv.wait_healthy(timeout=900)
        yield srv
    finally:
        srv.terminate()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = gguf_tokenizer(GGUFCheckpoint(str(embedded_model_path("smollm2-135m"))))
    return tokenizer.save_pretrained(tmp_path_factory.mktemp("tokenizer"))
