"""Served greedy output alone vs concurrent, real `serve` process: 16 chat requests and 16
/generate requests of mixed lengths, each sent alone, then all at once (twice). Any difference
is printed; the last line counts them. Results: bench/model/results_block_weights.md.

    .venv/bin/python bench/serving/served_batch_invariance.py --weight-dtype gguf
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.inference_app.server.test_process import PROMPTS
from tests.inference_app.serving_cases import OFFLINE, ServerProcess

QUESTIONS = [
    "What is the capital of France?", "Name three colours.", "Write a haiku about rain.",
    "What is 2 + 2?", "Who wrote Hamlet?", "Explain gravity in one sentence.",
    "List two fruits.", "What is the tallest mountain?",
]  # fmt: skip


def chat(base: str, question: str, n: int) -> str:
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": n, "temperature": 0}
    r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=600)
    r.raise_for_status()
    return str(r.json()["choices"][0]["message"]["content"])


def generate(base: str, prompt: str, n: int) -> str:
    r = httpx.post(f"{base}/generate", json={"prompt": prompt, "max_tokens": n}, timeout=600)
    r.raise_for_status()
    return str(r.json()["response"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--weight-dtype", default="gguf")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    srv = ServerProcess(["serve", "--max-slots", "4", "--weight-dtype", args.weight_dtype], env=OFFLINE)
    try:
        srv.wait_healthy(timeout=900)
        cases = [(chat, QUESTIONS[i % 8] + " " * (i // 8), 16 + (i * 5) % 9) for i in range(16)]
        cases += [(generate, PROMPTS[i % 8] + " " * (i // 8), 3 + (i * 5) % 7) for i in range(16)]
        differing = 0
        for rep in range(args.repeats):
            alone = [f(srv.base, q, n) for f, q, n in cases]
            with ThreadPoolExecutor(len(cases)) as pool:
                together = list(pool.map(lambda c: c[0](srv.base, c[1], c[2]), cases))
            for (f, q, _), a, t in zip(cases, alone, together, strict=True):
                if a != t:
                    differing += 1
                    print(f"rep {rep} {f.__name__} {q!r}: alone {a!r} together {t!r}")
        print(f"{args.weight_dtype}: {differing} of {len(cases) * args.repeats} requests differ")
    finally:
        srv.terminate()


if __name__ == "__main__":
    main()
