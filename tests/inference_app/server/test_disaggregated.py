"""Disaggregated serving on 8 virtual CPU devices (prefill on 4, generate on the other 4): the KV
cache moves between the groups with `jax.device_put`, and the outputs equal interleaved serving.

Slow (two real servers, each compiling its buckets): run with `make test-slow`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.inference_app.serving_cases import ServerProcess

PROMPTS = [
    ("What are the top 5 programming languages", 24),
    ("The capital of France is", 12),
    ("def fibonacci(n):", 32),
    ("Once upon a time, in a small village by the sea, there lived an old fisherman who", 20),
    ("Q: Why is the sky blue?\nA:", 28),
    ("List three colors:", 16),
]
LIMITS = ["--max-slots", "4", "--max-prefill-length", "64", "--max-target-length", "128"]


def serve_all(mode: str, devices: int) -> list[str]:
    srv = ServerProcess(
        ["serve", "--mode", mode, *LIMITS],
        env={"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"},
    )
    try:
        srv.wait_healthy(timeout=400)
        if mode == "disaggregated":
            assert "in disaggregated mode" in srv.logs()

        def one(case: tuple[str, int]) -> str:
            body = {"prompt": case[0], "max_tokens": case[1], "ignore_eos": True}
            r = httpx.post(f"{srv.base}/generate", json=body, timeout=300)
            assert r.status_code == 200, r.text
            return str(r.json()["response"])

        with ThreadPoolExecutor(len(PROMPTS)) as pool:  # concurrent: transfers overlap decoding
            return list(pool.map(one, PROMPTS))
    finally:
        assert srv.terminate() == 0


@pytest.mark.slow
def test_disaggregated_4_plus_4_equals_interleaved() -> None:
    disaggregated = serve_all("disaggregated", 8)
    interleaved = serve_all("interleaved", 1)  # what `make serve` runs: one device, no sharding
    assert all(text.strip() for text in disaggregated)
    assert disaggregated == interleaved
