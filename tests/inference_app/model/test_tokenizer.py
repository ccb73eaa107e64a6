"""Our GGUF-built tokenizer against transformers' GGUF tokenizer (the reference) on a table."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from inference_app.model.catalog import embedded_model_path
from inference_app.model.tokenizer import TextTokenizer
from inference_app.model.weights_gguf import GGUFCheckpoint, gguf_tokenizer

TABLE = [
    "Hello world",
    "",
    "1234567890 and 3.14159 and 1,000,000",
    "   leading, trailing   \n\n\n\tand tab runs\t\t  ",
    "def f(x):\n    return {'a': x ** 2}  # comment\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "日本語のテキストと中文字符",
    "emoji 😀👍🏽🇫🇷 and ZWJ 👨‍👩‍👧",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "don't you're I'll we've they'd",
    "a1b22c333d4444",
    "Ünïcödé àccénts — “quotes” …",
]


@pytest.fixture(scope="module")
def ours() -> TextTokenizer:
    return gguf_tokenizer(GGUFCheckpoint(str(embedded_model_path("smollm2-135m"))))


@pytest.fixture(scope="module")
def reference() -> Any:
    transformers = pytest.importorskip("transformers")
    path = embedded_model_path("smollm2-135m")
    with tempfile.TemporaryDirectory() as tmp:
        os.symlink(path, Path(tmp) / path.name)
        return transformers.AutoTokenizer.from_pretrained(tmp, gguf_file=path.name)


@pytest.mark.parametrize("text", TABLE)
def test_ids_equal_reference(ours: TextTokenizer, reference: Any, text: str) -> None:
    assert ours.encode(text) == reference.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("text", TABLE)
def test_decode_round_trips(ours: TextTokenizer, text: str) -> None:
    assert ours.decode(ours.encode(text)) == text


def test_digits_are_split_individually(ours: TextTokenizer) -> None:
    ids = ours.encode("2024")
    assert len(ids) == 4 and [ours.decode([i]) for i in ids] == ["2", "0", "2", "4"]


def test_chatml_markers_are_single_tokens(ours: TextTokenizer) -> None:
    assert ours.encode("<|im_start|>") == [1] and ours.encode("<|im_end|>") == [2]


def test_chat_template_equals_reference(ours: TextTokenizer, reference: Any) -> None:
    conversations = [
        [{"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ],
    ]
    for msgs in conversations:
        for gen in (True, False):
            expected = reference.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            assert ours.apply_chat_template(msgs, add_generation_prompt=gen) == expected


def test_unsupported_pre_tokenizer_is_a_clear_error() -> None:
    from inference_app.model.tokenizer import from_gguf_fields

    with pytest.raises(ValueError, match="pre-tokenizer 'qwen2' is not supported"):
        from_gguf_fields(["a"], [1], [], "qwen2", 0, None, None)
