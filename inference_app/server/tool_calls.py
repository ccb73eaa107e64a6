"""Tool calling for models whose chat template may or may not know about tools.

Where it sits: `serving_openai` hands the request's `tools` / `tool_choice` here. The tools go to the
model's chat template (templates written for tool use render them themselves); when the template
ignores them (SmolLM2's does), `tools_system_prompt` describes them in a system message instead.
Either way the model answers a call as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
(the Hermes/Qwen convention). With `tool_choice` "required" or a named function, `call_grammar`
constrains the output to exactly such a call whose arguments match the function's JSON schema;
with "auto" the text is free and `parse_tool_calls` turns any well-formed call in it into OpenAI's
`tool_calls`.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from inference_app.orchestrator.grammar import JSON_LAYOUT, GrammarSpec

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*" + re.escape(CLOSE), re.DOTALL)


@dataclass(frozen=True)
class Function:
    name: str
    description: str
    parameters: dict[str, Any]  # a JSON schema (an empty object schema when the tool takes none)


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


def tools_system_prompt(functions: list[Function]) -> str:
    """What a model whose template ignores `tools` is told about them."""
    specs = "\n".join(
        json.dumps({"name": f.name, "description": f.description, "parameters": f.parameters})
        for f in functions
    )
    return (
        "You can call functions. Their signatures, one JSON object per line:\n"
        f"{specs}\n"
        f'To call one, answer with {OPEN}{{"name": <function name>, "arguments": <arguments object>}}{CLOSE} '
        "and nothing else."
    )


def _call_schema(f: Function) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": f.name}, "arguments": f.parameters or {"type": "object"}},
        "required": ["name", "arguments"],
        "additionalProperties": False,
        "x-guidance": dict(JSON_LAYOUT),  # no free whitespace (see orchestrator/grammar.py)
    }


def call_grammar(functions: list[Function]) -> GrammarSpec:
    """Exactly one call of one of `functions`, its arguments valid against that function's schema."""
    if not functions:
        raise ValueError("a forced tool call needs at least one function")
    rules = [f"fn{i}: %json {json.dumps(_call_schema(f))}" for i, f in enumerate(functions)]
    alternatives = " | ".join(f"fn{i}" for i in range(len(functions)))
    grammar = "\n".join(
        [f"start: {json.dumps(OPEN)} call {json.dumps(CLOSE)}", f"call: {alternatives}", *rules]
    )
    return GrammarSpec.lark(grammar)


def parse_tool_calls(text: str, functions: list[Function]) -> tuple[str | None, list[ToolCall]]:
    """(the content left outside the calls, or None when nothing is; the calls of known functions).

    A block that is not JSON, or names an unknown function, stays in the content as text."""
    names = {f.name for f in functions}
    calls: list[ToolCall] = []
    kept: list[str] = []
    last = 0
    for match in _CALL.finditer(text):
        try:
            obj = json.loads(match.group(1))
        except json.JSONDecodeError:
            continue
        if (
            not isinstance(obj, dict)
            or obj.get("name") not in names
            or not isinstance(obj.get("arguments", {}), dict)
        ):
            continue
        kept.append(text[last : match.start()])
        last = match.end()
        calls.append(
            ToolCall(f"call_{uuid.uuid4().hex[:24]}", obj["name"], json.dumps(obj.get("arguments", {})))
        )
    kept.append(text[last:])
    content = "".join(kept).strip()
    return (content or None) if calls else text, calls


def call_as_text(name: str, arguments: str) -> str:
    """An assistant message's earlier tool call, written back the way the model writes one."""
    try:
        args: Any = json.loads(arguments)
    except json.JSONDecodeError:
        args = arguments
    return f"{OPEN}{json.dumps({'name': name, 'arguments': args})}{CLOSE}"
