"""The leniency table against the OpenAI SDK's own request types (a schema nobody here wrote)."""

from __future__ import annotations

from pathlib import Path

import pytest
from openai.types import completion_create_params as completions_params
from openai.types.chat import completion_create_params as chat_params

from inference_app.server.openai_fields import BY_NAME, RULES, UnsupportedField, compatibility_table, screen


def sdk_fields(params: type) -> set[str]:
    return set(params.CompletionCreateParamsStreaming.__annotations__) | set(  # type: ignore[attr-defined]
        params.CompletionCreateParamsBase.__annotations__  # type: ignore[attr-defined]
    )


@pytest.mark.parametrize(("endpoint", "params"), [("chat", chat_params), ("completions", completions_params)])
def test_every_field_of_the_sdk_request_schema_has_a_rule(endpoint: str, params: type) -> None:
    assert sdk_fields(params) - {name for (e, name) in BY_NAME if e == endpoint} == set()


@pytest.mark.parametrize(("endpoint", "params"), [("chat", chat_params), ("completions", completions_params)])
def test_no_rule_names_a_field_the_sdk_does_not_send(endpoint: str, params: type) -> None:
    assert {name for (e, name) in BY_NAME if e == endpoint} - sdk_fields(params) == set()


def test_informational_and_neutral_fields_are_dropped_and_listed() -> None:
    body = {
        "model": "m",
        "messages": [],
        "store": True,
        "metadata": {"a": "b"},
        "frequency_penalty": 0,
        "logit_bias": {},
        "audio": None,
        "modalities": ["text"],
        "function_call": "none",
        "temperature": None,
    }
    kept, dropped = screen(body, "chat")
    assert kept == {"model": "m", "messages": []}
    assert sorted(dropped) == [
        "audio",
        "frequency_penalty",
        "function_call",
        "logit_bias",
        "metadata",
        "modalities",
        "store",
        "temperature",
    ]


@pytest.mark.parametrize(
    ("endpoint", "field", "value"),
    [
        ("chat", "frequency_penalty", 0.5),
        ("chat", "logit_bias", {"50256": -100}),
        ("chat", "audio", {"voice": "x"}),
        ("chat", "modalities", ["text", "audio"]),
        ("completions", "best_of", 3),
        ("completions", "suffix", "end"),
        ("chat", "functions", [{"name": "f"}]),
        ("chat", "presence_penalty", True),
    ],
)
def test_a_real_use_of_an_unsupported_feature_is_refused_naming_the_field(
    endpoint: str, field: str, value: object
) -> None:
    with pytest.raises(UnsupportedField, match=f"^{field}: not supported by this server") as info:
        screen({field: value}, endpoint)  # type: ignore[arg-type]
    assert info.value.name == field


def test_fields_outside_the_openai_schema_are_left_for_the_model_to_refuse() -> None:
    assert screen({"max_token": 5, "priority": 1}, "chat") == ({"max_token": 5, "priority": 1}, [])
    assert screen({"store": True}, "completions") == ({"store": True}, [])  # chat-only field


def test_rules_are_unique() -> None:
    assert len(RULES) == len({(r.name, r.endpoints) for r in RULES})


def test_the_docs_show_the_table() -> None:
    docs = (Path(__file__).parents[3] / "docs" / "serving.md").read_text()
    assert compatibility_table() in docs
