"""The tokenizer directory we export, loaded by transformers' AutoTokenizer (as guidellm and lm-eval do)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inference_app.model.catalog import embedded_model_path
from inference_app.model.tokenizer import TextTokenizer
from inference_app.model.weights_gguf import gguf_tokenizer, open_gguf

TEXTS = [
    "Hello world",
    "def f(x):\n    return x ** 2\n",
    "1234 and 日本語 😀",
    "<|im_start|>user\nHi<|im_end|>\n",
]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture(scope="module")
def ours() -> TextTokenizer:
    return gguf_tokenizer(open_gguf(str(embedded_model_path("smollm2-135m"))))


@pytest.fixture(scope="module")
def loaded(ours: TextTokenizer, tmp_path_factory: pytest.TempPathFactory) -> Any:
    transformers = pytest.importorskip("transformers")
    directory = ours.save_pretrained(tmp_path_factory.mktemp("tok"))
    assert sorted(p.name for p in Path(directory).iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    return transformers.AutoTokenizer.from_pretrained(str(directory))


@pytest.mark.parametrize("text", TEXTS)
def test_autotokenizer_encodes_and_decodes_as_ours(ours: TextTokenizer, loaded: Any, text: str) -> None:
    ids = loaded.encode(text, add_special_tokens=False)
    assert ids == ours.encode(text)
    assert loaded.decode(ids) == ours.decode(ids)


def test_autotokenizer_knows_eos_and_renders_the_chat_template_as_ours(
    ours: TextTokenizer, loaded: Any
) -> None:
    assert loaded.eos_token_id in ours.eos_token_ids
    assert loaded.apply_chat_template(
        CHAT, tokenize=False, add_generation_prompt=True
    ) == ours.apply_chat_template(CHAT, add_generation_prompt=True)
