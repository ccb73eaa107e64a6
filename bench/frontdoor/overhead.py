"""What the front door costs a well-behaved client: this tree vs an older one, alternating rounds.

    .venv/bin/python -m bench.frontdoor.overhead --before /tmp/old [--rounds 3]

Per round and server (fake engine, no step delay, so HTTP dominates): 1000 sequential
`/healthcheck` requests on one keep-alive connection, and 20 streamed `/generate` requests of 300
tokens each (one NDJSON line per token). Prints the median per server; `results/overhead.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import httpx

from tests.inference_app.serving_cases import REPO, ServerProcess

RESULTS = Path(__file__).parent / "results"


def health_per_s(base: str, n: int = 1000) -> float:
    with httpx.Client(base_url=base) as client:
        t0 = time.perf_counter()
        for _ in range(n):
            client.get("/healthcheck").raise_for_status()
        return n / (time.perf_counter() - t0)


def stream_lines_per_s(base: str, n: int = 20, tokens: int = 300) -> float:
    body = {"prompt": "overhead", "max_tokens": tokens, "ignore_eos": True, "stream": True}
    lines = 0
    with httpx.Client(base_url=base, timeout=60) as client:
        t0 = time.perf_counter()
        for _ in range(n):
            with client.stream("POST", "/generate", json=body) as r:
                lines += sum(1 for _ in r.iter_lines())
        return lines / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, required=True, help="the older source tree")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    trees = {"before": args.before, "after": REPO}
    runs: dict[str, dict[str, list[float]]] = {
        name: {"health_per_s": [], "stream_lines_per_s": []} for name in trees
    }
    for _ in range(args.rounds):
        for name, tree in trees.items():
            srv = ServerProcess(
                ["--step-delay", "0", "--warmup-delay", "0"], module="tests.inference_app.fakes", cwd=tree
            )
            try:
                srv.wait_healthy(timeout=60)
                runs[name]["health_per_s"].append(health_per_s(srv.base))
                runs[name]["stream_lines_per_s"].append(stream_lines_per_s(srv.base))
            finally:
                srv.terminate()
    summary = {name: {k: round(statistics.median(v)) for k, v in r.items()} for name, r in runs.items()}
    print(json.dumps({"median": summary, "runs": runs}, indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "overhead.json").write_text(json.dumps({"median": summary, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
