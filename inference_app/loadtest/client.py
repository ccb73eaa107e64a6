"""One streamed request against a serving endpoint, timed token by token.

`runner.py` calls `timed_request` once per prompt; `metrics.py` aggregates the `RequestResult`s.
The load test needs the time of every streamed chunk to derive TTFT (first chunk), inter-token
latency (gaps between chunks) and TPOT. Two wire formats are understood, so the same tool
measures our server and any OpenAI-compatible peer (llama.cpp, vLLM):

- `openai`: `POST /v1/completions` with `stream: true`; Server-Sent Events `data: {json}` whose
  `choices[0].text` is the new text, ending with `data: [DONE]`. `usage` is read when the server
  sends it (ours does in the last chunk); otherwise the output token count is the number of
  non-empty chunks, which is one per token for llama.cpp and for us.
- `generate`: our JetStream-compatible `POST /generate` with `stream: true`. Each event (an SSE
  `data:` line or one JSON object per line) carries `{"response": "<new text>"}`; an optional
  final object may carry `usage` like the OpenAI API.

Only the standard library and httpx are imported: the load test never loads JAX.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

Api = Literal["generate", "openai"]


@dataclass
class RequestResult:
    """What one request measured. `error` is set (and `ok` False) for any failure."""

    ok: bool
    latency: float  # seconds from sending to the end of the response
    ttft: float | None = None  # seconds to the first non-empty chunk
    itl: list[float] = field(default_factory=list)  # gaps between successive non-empty chunks
    output_tokens: int = 0
    prompt_tokens: int | None = None  # from the server's usage, when it reports one
    text: str = ""
    status: int | None = None
    error: str | None = None

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first: the decode speed one user sees."""
        if self.ttft is None or self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


FixedOutput = Literal["ignore_eos", "min_tokens"]


def request_body(
    api: Api,
    model: str | None,
    prompt: str,
    max_tokens: int,
    temperature: float,
    fixed_output: FixedOutput | None = None,
) -> dict[str, Any]:
    """The streamed request. `fixed_output` names the field that makes a server generate exactly
    `max_tokens` (ours and vLLM: `ignore_eos`; llama.cpp's server: `min_tokens`), so two servers
    are compared on the same amount of work even though their greedy outputs differ."""
    body: dict[str, Any] = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": True,
        "temperature": temperature,
    }
    if api == "openai":
        body["model"] = model or "default"
    if fixed_output == "ignore_eos":
        body["ignore_eos"] = True
    elif fixed_output == "min_tokens":
        body["min_tokens"] = max_tokens
    return body


def endpoint_path(api: Api) -> str:
    return "/v1/completions" if api == "openai" else "/generate"


def parse_event(line: str) -> dict[str, Any] | None:
    """One streamed line -> its JSON object; None for blank lines, comments, `[DONE]`."""
    line = line.strip()
    if not line or line.startswith(":") or line.startswith("event:"):
        return None
    if line.startswith("data:"):
        line = line[5:].strip()
    if line == "[DONE]":
        return None
    parsed = json.loads(line)
    return parsed if isinstance(parsed, dict) else None


def event_text(api: Api, event: dict[str, Any]) -> str:
    if api == "openai":
        choices = event.get("choices") or []
        return str(choices[0].get("text") or "") if choices else ""
    return str(event.get("response") or event.get("text") or "")


async def timed_request(
    client: httpx.AsyncClient,
    api: Api,
    base_url: str,
    prompt: str,
    max_tokens: int,
    *,
    model: str | None = None,
    temperature: float = 0.0,
    fixed_output: FixedOutput | None = None,
) -> RequestResult:
    """Send one streaming request and time every chunk; never raises for request failures."""
    body = request_body(api, model, prompt, max_tokens, temperature, fixed_output)
    url = base_url.rstrip("/") + endpoint_path(api)
    start = time.perf_counter()
    result = RequestResult(ok=False, latency=0.0)
    last: float | None = None
    chunks = 0
    parts: list[str] = []
    try:
        async with client.stream("POST", url, json=body) as resp:
            result.status = resp.status_code
            if resp.status_code != 200:
                detail = (await resp.aread()).decode("utf-8", "replace")[:300]
                result.error = f"HTTP {resp.status_code}: {detail}"
                result.latency = time.perf_counter() - start
                return result
            async for line in resp.aiter_lines():
                event = parse_event(line)
                if event is None:
                    continue
                if "error" in event and not event.get("choices"):
                    result.error = f"stream error: {json.dumps(event['error'])[:300]}"
                    break
                usage = event.get("usage")
                if isinstance(usage, dict):
                    result.prompt_tokens = usage.get("prompt_tokens", result.prompt_tokens)
                    if usage.get("completion_tokens") is not None:
                        result.output_tokens = int(usage["completion_tokens"])
                text = event_text(api, event)
                if not text:
                    continue
                now = time.perf_counter()
                if last is None:
                    result.ttft = now - start
                else:
                    result.itl.append(now - last)
                last = now
                chunks += 1
                parts.append(text)
    except (httpx.HTTPError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.latency = time.perf_counter() - start
    result.text = "".join(parts)
    result.output_tokens = max(result.output_tokens, chunks)
    result.ok = result.error is None
    return result
