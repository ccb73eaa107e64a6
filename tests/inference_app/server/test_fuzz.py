"""Fuzz the HTTP API from its own OpenAPI schema (schemathesis + hypothesis): no 5xx on any input.

A real server process (fake engine, no decode delay) serves; schemathesis reads its
`/openapi.json` and generates bodies for every operation — valid ones and, in negative mode,
ones that break the schema (wrong types, missing fields, out-of-range numbers, odd strings).
Every answer must be below 500, and every 4xx must use the one documented error shape.
Plus raw byte bodies from hypothesis (not JSON, invalid UTF-8, truncated JSON) on each POST.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode

from tests.inference_app.server.test_faults import start
from tests.inference_app.serving_cases import ServerProcess

POST_PATHS = ("/generate", "/v1/completions", "/v1/chat/completions")


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    srv = start("--step-delay", "0", "--max-slots", "4", "--max-queue", "64")
    yield srv
    srv.terminate()


def check_answer(status: int, body: object, where: str) -> None:
    assert status < 500, f"{where}: {status} {body!r:.300}"
    if 400 <= status < 500 and isinstance(body, dict):
        err = body.get("error")
        assert isinstance(err, dict) and err.get("message") and err.get("code") == status, (
            f"{where}: {body!r:.300}"
        )


@pytest.mark.parametrize("examples", [30, pytest.param(1000, marks=pytest.mark.slow)])
def test_schema_driven_fuzzing_gets_no_5xx(server: ServerProcess, examples: int) -> None:
    schema = schemathesis.openapi.from_url(f"{server.base}/openapi.json")
    tried: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the server's OpenAPI schema is invalid: {result}"
        operations.append(result.ok())
    assert {op.path for op in operations} >= set(POST_PATHS) | {"/healthcheck", "/metrics", "/v1/models"}
    for op in operations:
        strategy = op.as_strategy(generation_mode=GenerationMode.POSITIVE) | op.as_strategy(
            generation_mode=GenerationMode.NEGATIVE
        )

        @settings(
            max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(case=strategy)
        def fuzz(case: schemathesis.Case) -> None:
            label = f"{case.operation.method.upper()} {case.operation.path}"
            response = case.call(base_url=server.base, timeout=30)
            tried[label] += 1
            statuses[response.status_code] += 1
            try:
                body = response.json()
            except ValueError:
                body = response.text
            check_answer(response.status_code, body, f"{label} {case.body!r:.200}")

        fuzz()
    print(f"\nfuzz: {sum(tried.values())} requests, by operation {dict(tried)}, statuses {dict(statuses)}")
    assert sum(tried.values()) >= 5 * len(operations)
    assert statuses[200] > 0 and sum(n for s, n in statuses.items() if 400 <= s < 500) > 0  # both sides hit
    assert httpx.get(f"{server.base}/healthcheck").status_code == 200


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from(POST_PATHS),
    raw=st.one_of(
        st.binary(max_size=300),
        st.text(max_size=200).map(lambda t: ('{"prompt": "' + t).encode("utf-8", "surrogatepass")),
        st.binary(max_size=100).map(lambda b: b'{"prompt": "' + b + b'", "max_tokens": 3}'),
    ),
)
def test_raw_bodies_get_4xx_not_5xx(server: ServerProcess, path: str, raw: bytes) -> None:
    r = httpx.post(
        f"{server.base}{path}", content=raw, headers={"content-type": "application/json"}, timeout=30
    )
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
    check_answer(r.status_code, body, f"{path} {raw!r:.200}")
