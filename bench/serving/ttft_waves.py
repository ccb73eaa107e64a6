"""TTFT of a wave of concurrent chat requests: fresh prompts, then the same prompts again.

`compare.py` (guidellm) reuses its synthetic prompts from one concurrency level to the next, so its
TTFT at 32 concurrent mixes prompts each server has cached (those of the level before) with new
ones. This separates the two: each round sends C streaming chat requests at once (about 128-token
prompts of random words, a distinct seed per round, 96 output tokens, `ignore_eos`, greedy) and
records every request's time to its first content chunk. `fresh` rounds use prompts no server has
seen; a `repeat` round sends the previous round's prompts again (a server with a prefix cache
computes little of them).

Servers are started by `compare.py`'s `start` (ours exactly as `make serve` runs it, llama-server
with its defaults and `--parallel` = our slot count), one at a time. Results:
`bench/serving/results/<name>.json` and a table on stdout.

    .venv/bin/python bench/serving/ttft_waves.py --name ttft-waves
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # a sibling script: server start-up and paths

# The words of the project's benchmark prompts: the vocabulary the random prompts draw from.
BENCH_PROMPTS = compare.ROOT / "inference_app" / "data" / "bench_prompts.jsonl"
PROMPT_WORDS = 118  # about 128 tokens with SmolLM2's tokenizer


def prompts(count: int, seed: int) -> list[str]:
    lines = BENCH_PROMPTS.read_text().splitlines()
    words = sorted({w for line in lines for w in json.loads(line)["prompt"].split() if w.isalpha()})
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(PROMPT_WORDS)) for _ in range(count)]


async def one(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> float | None:
    """Seconds from sending the request to its first content chunk (None: it failed)."""
    body = {
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "messages": [{"role": "user", "content": prompt}],
    }
    start = time.perf_counter()
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            return None
        first = None
        async for line in r.aiter_lines():
            if first is None and line.startswith("data: ") and has_text(line[6:]):
                first = time.perf_counter() - start
    return first


def has_text(data: str) -> bool:
    """Whether an SSE chunk of a chat completion carries generated text."""
    if data.strip() == "[DONE]":
        return False
    choices = json.loads(data).get("choices") or [{}]
    return bool((choices[0].get("delta") or {}).get("content"))


async def rounds(
    url: str, concurrency: int, plan: list[tuple[str, int]], max_tokens: int
) -> list[dict[str, Any]]:
    out = []
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        for kind, seed in plan:
            texts = prompts(concurrency, seed)
            t0 = time.perf_counter()
            ttfts = await asyncio.gather(*(one(client, url, p, max_tokens) for p in texts))
            ok = sorted(t for t in ttfts if t is not None)
            out.append(
                {
                    "kind": kind,
                    "seed": seed,
                    "completed": len(ok),
                    "failed": len(ttfts) - len(ok),
                    "ttft_ms": {
                        "p50": round(1000 * statistics.median(ok), 1) if ok else None,
                        "max": round(1000 * ok[-1], 1) if ok else None,
                        "min": round(1000 * ok[0], 1) if ok else None,
                    },
                    "round_s": round(time.perf_counter() - t0, 2),
                }
            )
            print(f"    {kind:6s} seed {seed}: {out[-1]['ttft_ms']}  failed {out[-1]['failed']}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default="ttft-waves")
    p.add_argument("--servers", default="ours,llama-server")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--fresh", type=int, default=3, help="rounds of new prompts (each then repeated once)")
    p.add_argument("--max-tokens", type=int, default=96)
    args = p.parse_args()
    plan: list[tuple[str, int]] = []
    for seed in range(1, args.fresh + 1):
        plan += [("fresh", seed), ("repeat", seed)]
    result: dict[str, Any] = {
        "name": args.name,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "uptime_start": compare.uptime(),
        "commit": compare.git_commit(),
        "llama_cpp_commit": compare.llama_cpp_commit(),
        "args": vars(args),
        "servers": {},
    }
    slots = 0
    with tempfile.TemporaryDirectory() as logs:
        for name in [n for n in args.servers.split(",") if n]:
            server = compare.start(name, Path(logs), slots, [])
            try:
                server.wait_ready()
                if name == "ours":
                    slots = compare.our_slots(server)
                print(f"  {name}", flush=True)
                result["servers"][name] = asyncio.run(
                    rounds(server.url, args.concurrency, plan, args.max_tokens)
                )
            finally:
                server.close()
    result["uptime_end"] = compare.uptime()
    path = compare.RESULTS / f"{args.name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


def table(result: dict[str, Any]) -> str:
    names = list(result["servers"])
    head = "| round | " + " | ".join(f"{n} TTFT p50 / max ms" for n in names) + " |"
    lines = [head, "|---|" + "---:|" * len(names)]
    rows = zip(*(result["servers"][n] for n in names), strict=True)
    for cells in rows:
        label = f"{cells[0]['kind']} (seed {cells[0]['seed']})"
        lines.append(
            f"| {label} | "
            + " | ".join(
                f"{c['ttft_ms']['p50']} / {c['ttft_ms']['max']}"
                + (f" ({c['failed']} failed)" if c["failed"] else "")
                for c in cells
            )
            + " |"
        )
    return "\n".join(lines)


def cell(r: dict[str, Any]) -> str:
    failed = f" ({r['failed']} failed)" if r["failed"] else ""
    return f"{r['ttft_ms']['p50']} / {r['ttft_ms']['max']}{failed}"


if __name__ == "__main__":
    main()
