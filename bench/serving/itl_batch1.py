"""Batch-1 inter-token latency: our server vs its own engine driven directly, same flags, same time.

Why: the served ITL (guidellm, `docs/benchmarks.md`) and the engine's decode step
(`bench/model/bench_decode.py`) were measured on different days under different load; on this
shared 2-core machine that alone can double a step. This script takes both at once, alternating,
so that background load hits both sides alike:

  served   one streaming chat request (`max_tokens` 96, greedy, `ignore_eos`, a ~100-token
           prompt) to `python -m inference_app serve` started with `--flags`; ITL = the gaps
           between content chunks as the client reads them (SSE, HTTP, detokenisation, the
           orchestrator's threads and the engine step, all included)
  engine   the same engine (`settings_from_args` of the same flags, so slots, context, paged
           cache and chunked prefill match), the same prompt (`add_prompt`, or `prefill` +
           `insert` with `--no-chunked-prefill`), then 95 `generate()` steps, each step's tokens
           copied to host while the next one runs (what the orchestrator does): the gaps between
           those copies

Per round it prints both medians and the 1-minute load average; at the end the medians over the
rounds and the server's CPU seconds per generated token by thread (from /proc), which says where
the served path spends CPU outside the step. Results go to `--out` as JSON.

    .venv/bin/python bench/serving/itl_batch1.py [--rounds 6] [--flags "--max-slots 1"] [--out x.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PY = str(ROOT / ".venv" / "bin" / "python")
PROMPT = "Write a long story about a lighthouse keeper and a storm. " * 8
MAX_TOKENS = 96


def engine_worker(flags: list[str]) -> None:
    """Child process: build the engine from serve flags; one timed decode per line on stdin."""
    from inference_app.engine import SamplingParams
    from inference_app.engine.engine import load_engine
    from inference_app.engine.settings import settings_from_args
    from inference_app.server.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    engine = load_engine(settings_from_args(parser.parse_args(flags)))
    engine.warmup()
    prompt = engine.tokenizer.encode_chat([{"role": "user", "content": PROMPT}])
    print("ready", flush=True)
    for _ in sys.stdin:
        engine.release(0)
        sampling = SamplingParams(temperature=0.0, seed=0)
        if engine.chunked_prefill:
            engine.add_prompt(0, prompt, sampling, MAX_TOKENS)
            while 0 not in engine._active:  # the prompt's chunks; the last one yields token 1
                np.asarray(engine.generate().tokens)
        else:  # --no-chunked-prefill: the separate prefill stage, as the orchestrator runs it
            engine.insert(engine.transfer(engine.prefill(prompt, sampling)), 0)
        prev, seen = None, []
        for _ in range(MAX_TOKENS - 1):
            out = engine.generate()
            if prev is not None:
                np.asarray(prev)
                seen.append(time.perf_counter())
            prev = out.tokens
        np.asarray(prev)
        seen.append(time.perf_counter())
        print(json.dumps({"itl_p50_ms": float(np.median(np.diff(seen))) * 1e3}), flush=True)


def served_itl(client: httpx.Client, url: str) -> tuple[float, int]:
    """ITL p50 (ms) of one streamed request, and the content chunks it got."""
    body = {
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
    }
    seen = []
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                    seen.append(time.perf_counter())
    return float(np.median(np.diff(seen))) * 1e3, len(seen)


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of `pid`, keyed 'tid name'."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[f"{tid} {name}"] = (int(fields[11]) + int(fields[12])) / tick
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--flags", default="", help="serve flags for both sides (default: make serve's)")
    p.add_argument("--port", type=int, default=8141)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--engine-worker", action="store_true", help=argparse.SUPPRESS)
    args, rest = p.parse_known_args()
    flags = shlex.split(args.flags)
    if args.engine_worker:
        engine_worker(rest)
        return
    url = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen(
        [PY, "-m", "inference_app", "serve", "--port", str(args.port), "--log-level", "warning", *flags],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    engine = subprocess.Popen(
        [PY, __file__, "--engine-worker", *flags],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert engine.stdin is not None and engine.stdout is not None
    try:
        while engine.stdout.readline().strip() != "ready":
            if engine.poll() is not None:
                raise SystemExit("the engine worker exited during start-up")
        with httpx.Client(timeout=300) as client:
            for _ in range(600):
                try:
                    if client.get(f"{url}/healthcheck").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(1)
            served_itl(client, url)  # warm the HTTP path once
            rounds: list[dict[str, Any]] = []
            cpu = collections.Counter[str]()
            tokens = 0
            for i in range(args.rounds):
                before = thread_cpu(server.pid)
                s, n = served_itl(client, url)
                after = thread_cpu(server.pid)
                cpu.update({k: v - before.get(k, 0.0) for k, v in after.items()})
                tokens += n
                engine.stdin.write("go\n")
                engine.stdin.flush()
                e = json.loads(engine.stdout.readline())["itl_p50_ms"]
                row = {"served_ms": round(s, 2), "engine_ms": round(e, 2), "load": os.getloadavg()[0]}
                rounds.append(row)
                print(f"round {i}: {row}", flush=True)
    finally:
        engine.kill()
        server.terminate()
        server.wait(timeout=60)
    per_token = {k: round(v / tokens * 1e3, 2) for k, v in cpu.most_common() if v / tokens * 1e3 >= 0.05}
    result = {
        "flags": args.flags,
        "rounds": rounds,
        "served_median_ms": round(statistics.median(r["served_ms"] for r in rounds), 2),
        "engine_median_ms": round(statistics.median(r["engine_ms"] for r in rounds), 2),
        "server_cpu_ms_per_token_by_thread": per_token,
        "server_cpu_ms_per_token": round(sum(cpu.values()) / tokens * 1e3, 2),
    }
    print(json.dumps(result, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
