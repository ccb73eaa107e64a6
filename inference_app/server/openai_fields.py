"""Every field of OpenAI's chat/completions request schemas, and what this server does with it.

One table is the single source of truth for the leniency rules (and for the compatibility table in
docs/serving.md, which a test keeps equal to it). Before a request body reaches its Pydantic model,
`screen` removes the fields this server accepts without acting on them: informational ones
(`store`, `metadata`, `user`, ...) always, and fields of features it does not have when they carry
their neutral value (`frequency_penalty: 0`, `logit_bias: {}`, `audio: null`, ...). A non-neutral
value of an unsupported feature is a 400 naming the field and saying it is unsupported; a field
that is not in OpenAI's schema at all stays in the body, so the model's `extra="forbid"` still
answers "unknown field" for typos.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Endpoint = Literal["chat", "completions"]
Status = Literal["supported", "ignored", "unsupported"]
CHAT: frozenset[Endpoint] = frozenset({"chat"})
COMPLETIONS: frozenset[Endpoint] = frozenset({"completions"})
BOTH: frozenset[Endpoint] = CHAT | COMPLETIONS


class UnsupportedField(ValueError):
    """A field of OpenAI's schema whose value asks for a feature this server does not have."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


@dataclass(frozen=True)
class FieldRule:
    name: str
    endpoints: frozenset[Endpoint]
    status: Status
    note: str  # what the server does, or why it cannot (shown in the docs and in the 400)
    neutral: Callable[[Any], bool] | None = None  # unsupported: the values accepted and ignored
    neutral_text: str = ""  # those values, for the 400 message and the docs


def _none(v: Any) -> bool:
    return v is None


def _zero(v: Any) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool) and v == 0)


def _empty(v: Any) -> bool:
    return v is None or v == {} or v == []


def _text_only(v: Any) -> bool:
    return v is None or v == ["text"]


def _one(v: Any) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool) and v == 1)


def _no_suffix(v: Any) -> bool:
    return v is None or v == ""


def _no_function_call(v: Any) -> bool:
    return v is None or v == "none"


RULES: tuple[FieldRule, ...] = (
    # --- honoured ----------------------------------------------------------------------------
    FieldRule(
        "model", BOTH, "supported", "the served Hugging Face id or its short alias; another name is 404"
    ),
    FieldRule(
        "messages",
        CHAT,
        "supported",
        "roles developer/system/user/assistant/tool; content a string, null or a list of text parts; "
        "rendered with the model's chat template",
    ),
    FieldRule(
        "prompt",
        COMPLETIONS,
        "supported",
        "a string, a list of strings, token ids, or a list of token-id lists",
    ),
    FieldRule(
        "max_tokens", BOTH, "supported", "default 16 (completions) / the room left, at most 256 (chat)"
    ),
    FieldRule("max_completion_tokens", CHAT, "supported", "as max_tokens"),
    FieldRule("temperature", BOTH, "supported", "0..2, default 1; 0 is greedy"),
    FieldRule("top_p", BOTH, "supported", "(0, 1]"),
    FieldRule("seed", BOTH, "supported", "same seed + prompt = same tokens"),
    FieldRule("stop", BOTH, "supported", "a string or up to 8 strings"),
    FieldRule("stream", BOTH, "supported", "server-sent events ending with data: [DONE]"),
    FieldRule(
        "stream_options",
        BOTH,
        "supported",
        "include_usage: a last chunk with usage and choices: []; continuous_usage_stats (vLLM): usage "
        "on every chunk; include_obfuscation is accepted and ignored",
    ),
    FieldRule("n", BOTH, "supported", "up to 8 choices, each sampled with its own seed"),
    FieldRule(
        "echo",
        COMPLETIONS,
        "supported",
        "the prompt text is prepended to each choice; with logprobs its tokens are scored too "
        "(max_tokens 0: only scored)",
    ),
    FieldRule(
        "logprobs",
        CHAT,
        "supported",
        "each generated token's log-probability under the raw model distribution (before "
        "temperature, top_k, top_p), streamed with its text",
    ),
    FieldRule(
        "top_logprobs",
        CHAT,
        "supported",
        "0..20 most likely alternatives per token (needs logprobs: true)",
    ),
    FieldRule(
        "logprobs",
        COMPLETIONS,
        "supported",
        "0..20: each token's log-probability (raw model distribution) and that many most likely "
        "alternatives, plus the chosen token",
    ),
    FieldRule(
        "response_format",
        CHAT,
        "supported",
        "text; json_object (any JSON object) and json_schema (strict: a keyword the grammar cannot enforce "
        "is a 400), enforced by token masks in the engine; ends with stop when the JSON is complete",
    ),
    FieldRule(
        "tools",
        CHAT,
        "supported",
        "type function; described to the model (its chat template, or a system message when the "
        "template ignores tools); <tool_call> blocks in the answer become tool_calls",
    ),
    FieldRule(
        "tool_choice",
        CHAT,
        "supported",
        "none, auto, required, or a named function: the last two force one call whose arguments match the "
        "function's schema (token masks); they take precedence over response_format",
    ),
    # --- accepted, no effect (informational, or a hint a local server has no use for) ---------
    FieldRule("user", BOTH, "ignored", "informational"),
    FieldRule("store", CHAT, "ignored", "nothing is stored"),
    FieldRule("metadata", CHAT, "ignored", "informational"),
    FieldRule("service_tier", CHAT, "ignored", "one tier"),
    FieldRule("safety_identifier", CHAT, "ignored", "informational"),
    FieldRule("prompt_cache_key", CHAT, "ignored", "a routing hint"),
    FieldRule("prompt_cache_retention", CHAT, "ignored", "a routing hint"),
    FieldRule("prompt_cache_options", CHAT, "ignored", "a routing hint"),
    FieldRule("parallel_tool_calls", CHAT, "ignored", "at most one tool call per answer is generated"),
    FieldRule("reasoning_effort", CHAT, "ignored", "the model does not reason in a separate channel"),
    FieldRule("verbosity", CHAT, "ignored", "a hint to reasoning models"),
    # --- features this server does not have: neutral values accepted ----------------------------
    FieldRule(
        "frequency_penalty",
        BOTH,
        "unsupported",
        "repetition penalties are not implemented",
        _zero,
        "0 or null",
    ),
    FieldRule(
        "presence_penalty",
        BOTH,
        "unsupported",
        "repetition penalties are not implemented",
        _zero,
        "0 or null",
    ),
    FieldRule("logit_bias", BOTH, "unsupported", "logit biases are not implemented", _empty, "{} or null"),
    FieldRule(
        "best_of",
        COMPLETIONS,
        "unsupported",
        "server-side best-of ranking is not implemented",
        _one,
        "1 or null",
    ),
    FieldRule(
        "suffix",
        COMPLETIONS,
        "unsupported",
        "fill-in-the-middle is not implemented",
        _no_suffix,
        '"" or null',
    ),
    FieldRule("audio", CHAT, "unsupported", "the model is text only", _none, "null"),
    FieldRule("modalities", CHAT, "unsupported", "the model is text only", _text_only, '["text"] or null'),
    FieldRule("prediction", CHAT, "unsupported", "predicted outputs are not implemented", _none, "null"),
    FieldRule("web_search_options", CHAT, "unsupported", "there is no web search", _none, "null"),
    FieldRule("moderation", CHAT, "unsupported", "there is no moderation model", _none, "null"),
    FieldRule(
        "functions",
        CHAT,
        "unsupported",
        "the deprecated functions API: send tools instead",
        _empty,
        "[] or null",
    ),
    FieldRule(
        "function_call",
        CHAT,
        "unsupported",
        "the deprecated functions API: send tool_choice instead",
        _no_function_call,
        '"none" or null',
    ),
)
BY_NAME: dict[tuple[Endpoint, str], FieldRule] = {(e, r.name): r for r in RULES for e in r.endpoints}


def screen(data: dict[str, Any], endpoint: Endpoint) -> tuple[dict[str, Any], list[str]]:
    """(the body without ignored fields, the names dropped); raises `UnsupportedField`.

    An explicit null of a supported field means its default, as in OpenAI's API, so it is dropped too."""
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for name, value in data.items():
        rule = BY_NAME.get((endpoint, name))
        if rule is not None and rule.status == "supported" and value is None:
            dropped.append(name)
        elif rule is None or rule.status == "supported":
            kept[name] = value
        elif rule.status == "ignored" or (rule.neutral is not None and rule.neutral(value)):
            dropped.append(name)
        else:
            raise UnsupportedField(
                name,
                f"{name}: not supported by this server ({rule.note}); "
                f"send {rule.neutral_text} or leave it out.",
            )
    return kept, dropped


def compatibility_table() -> str:
    """The markdown table of docs/serving.md (kept equal to `RULES` by a test)."""
    label = {
        "supported": "supported",
        "ignored": "accepted, ignored",
        "unsupported": "rejected unless neutral",
    }
    where = {BOTH: "both", CHAT: "chat", COMPLETIONS: "completions"}
    lines = ["| Field | Endpoint | Status | Notes |", "|---|---|---|---|"]
    for r in RULES:
        note = r.note if r.status != "unsupported" else f"{r.note}; accepted: {r.neutral_text}"
        lines.append(f"| `{r.name}` | {where[r.endpoints]} | {label[r.status]} | {note} |")
    return "\n".join(lines)
