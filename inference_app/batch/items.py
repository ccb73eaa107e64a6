"""Batch input: one JSONL line -> a validated `BatchItem` (first step of `batch`).

Flow: `items` (read and validate every line up front) -> `cli` (workers) -> `client` (HTTP) or
`local` (in-process orchestrator) -> `store` (the crash-safe result journal). A typo fails here,
naming the line and the field, before any request is sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import fsspec

SAMPLING_FIELDS = {"max_tokens", "temperature", "top_p", "top_k", "seed", "stop"}
ALLOWED_FIELDS = {"id", "prompt", "messages", "metadata"} | SAMPLING_FIELDS


@dataclass(frozen=True)
class BatchItem:
    """One input line: a prompt or chat messages, plus optional sampling overrides."""

    id: str | int
    prompt: str | None
    messages: list[dict[str, str]] | None
    sampling: dict[str, Any]
    metadata: Any = None

    @property
    def key(self) -> str:
        """Identity for resume: JSON-encoded so the id 1 and the id "1" stay distinct."""
        return json.dumps(self.id)


def _check_sampling(where: str, row: dict[str, Any]) -> dict[str, Any]:
    s = {k: row[k] for k in SAMPLING_FIELDS if k in row}

    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    def integer(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if "max_tokens" in s and not (integer(s["max_tokens"]) and s["max_tokens"] >= 1):
        raise ValueError(f"{where}: 'max_tokens' must be an integer >= 1")
    if "temperature" in s and not (number(s["temperature"]) and s["temperature"] >= 0):
        raise ValueError(f"{where}: 'temperature' must be a number >= 0")
    if "top_p" in s and not (number(s["top_p"]) and 0 < s["top_p"] <= 1):
        raise ValueError(f"{where}: 'top_p' must be in (0, 1]")
    if "top_k" in s and not (integer(s["top_k"]) and s["top_k"] >= 0):
        raise ValueError(f"{where}: 'top_k' must be an integer >= 0")
    if "seed" in s and not integer(s["seed"]):
        raise ValueError(f"{where}: 'seed' must be an integer")
    if "stop" in s and not (
        isinstance(s["stop"], str)
        or (isinstance(s["stop"], list) and all(isinstance(x, str) for x in s["stop"]))
    ):
        raise ValueError(f"{where}: 'stop' must be a string or a list of strings")
    return s


def parse_item(where: str, line: str) -> BatchItem:
    """Validate one input line; errors name the line and the field to fix."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc.msg})") from exc
    if not isinstance(row, dict):
        raise ValueError(f'{where}: expected a JSON object like {{"id": ..., "prompt": ...}}')
    unknown = sorted(set(row) - ALLOWED_FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(ALLOWED_FIELDS)}")
    item_id = row.get("id")
    if not isinstance(item_id, str | int) or isinstance(item_id, bool) or item_id == "":
        raise ValueError(f"{where}: 'id' is required and must be a non-empty string or an integer")
    prompt, messages = row.get("prompt"), row.get("messages")
    if (prompt is None) == (messages is None):
        raise ValueError(f"{where}: give exactly one of 'prompt' (a string) or 'messages' (chat)")
    if prompt is not None and (not isinstance(prompt, str) or not prompt):
        raise ValueError(f"{where}: 'prompt' must be a non-empty string")
    if messages is not None and not (
        isinstance(messages, list)
        and messages
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
    ):
        raise ValueError(f'{where}: \'messages\' must be a non-empty list of {{"role": str, "content": str}}')
    return BatchItem(item_id, prompt, messages, _check_sampling(where, row), row.get("metadata"))


def read_items(url: str) -> list[BatchItem]:
    """All input lines, validated up front so a typo fails before any request is sent."""
    items: list[BatchItem] = []
    seen: dict[str, int] = {}
    with fsspec.open(url, "r", encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            item = parse_item(f"{url} line {n}", line)
            if item.key in seen:
                raise ValueError(f"{url} line {n}: duplicate id {item.key} (first on line {seen[item.key]})")
            seen[item.key] = n
            items.append(item)
    return items
