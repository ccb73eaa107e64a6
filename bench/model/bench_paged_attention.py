"""The native CPU attention kernel over the paged KV cache vs over the slot cache (same math).

SmolLM2's attention shapes (3 KV heads x 3 query heads, head size 64, float32), four step
shapes: 32 decode rows at ~1000 tokens, one decode row at 2000, 32 decode rows at ~150, and a
mixed step of 31 decode rows plus a 225-token prompt chunk. The paged cache's blocks are handed
out in a random order (the worst case: every block of a sequence somewhere else in memory).
Per block size, the slot kernel and the paged kernel run alternately (so background load hits
both alike), 15 rounds of 10 calls; the medians go to bench/model/paged_attention.{json,md} with
the 1-minute load average, since the machine is shared.

Run: .venv/bin/python bench/model/bench_paged_attention.py [--block-sizes 16,32,64,128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from inference_app.kernels import build, ops  # noqa: E402
from inference_app.model import paged_attention as pa  # noqa: E402

KVH, G, D, SLOTS, T = 3, 3, 64, 32, 2048
SCALE = 0.125
ROUNDS, CALLS = 15, 10


def cases(rng: np.random.Generator) -> dict[str, tuple[list[int], list[int]]]:
    return {
        "32 decode rows at ~1000": (list(range(32)), list(rng.integers(800, 1200, 32))),
        "1 decode row at 2000": ([0], [2000]),
        "32 decode rows at ~150": (list(range(32)), list(rng.integers(100, 200, 32))),
        "31 decode + 225-token chunk": (
            [*range(31), *[31] * 225],
            [*rng.integers(100, 200, 31), *range(225)],
        ),
    }


def run(block_size: int, rng: np.random.Generator) -> dict[str, Any]:
    kc = rng.standard_normal((SLOTS, KVH, T, D), dtype=np.float32)
    vc = rng.standard_normal((SLOTS, KVH, T, D), dtype=np.float32)
    mb = T // block_size
    tables = rng.permutation(SLOTS * mb).astype(np.int32).reshape(SLOTS, mb)
    layout = pa.paged_layout("cpu", SLOTS * mb, block_size, KVH, D, jnp.float32)
    slots = np.repeat(np.arange(SLOTS, dtype=np.int32), T)
    pos = np.tile(np.arange(T, dtype=np.int32), SLOTS)
    blocks, offsets = pa.token_blocks(jnp.asarray(tables), jnp.asarray(slots), jnp.asarray(pos), layout)
    k = jnp.asarray(kc.transpose(0, 2, 1, 3).reshape(-1, KVH, D))
    v = jnp.asarray(vc.transpose(0, 2, 1, 3).reshape(-1, KVH, D))
    pages = jax.jit(pa.write_kv, static_argnums=1)(
        pa.zeros(layout, jnp.float32), layout, k, v, blocks, offsets
    )
    kc_j, vc_j, tab_j = jnp.asarray(kc), jnp.asarray(vc), jnp.asarray(tables)
    slot_kernel = jax.jit(ops.attention, static_argnums=5)
    paged_kernel = jax.jit(ops.paged_attention, static_argnums=5)
    out: dict[str, Any] = {}
    for name, (rows, positions) in cases(rng).items():
        q = jnp.asarray(rng.standard_normal((len(rows), KVH, G, D), dtype=np.float32))
        s, p = jnp.asarray(np.array(rows, np.int32)), jnp.asarray(np.array(positions, np.int32))
        calls = {
            "slot": lambda q=q, s=s, p=p: slot_kernel(q, kc_j, vc_j, s, p, SCALE),
            "paged": lambda q=q, s=s, p=p: paged_kernel(q, pages, tab_j, s, p, SCALE),
        }
        diff = float(jnp.max(jnp.abs(calls["slot"]() - calls["paged"]())))
        times: dict[str, list[float]] = {"slot": [], "paged": []}
        for _ in range(ROUNDS):
            for label, f in calls.items():
                t0 = time.perf_counter()
                for _ in range(CALLS):
                    r = f()
                r.block_until_ready()
                times[label].append((time.perf_counter() - t0) / CALLS * 1e6)
        slot_us, paged_us = statistics.median(times["slot"]), statistics.median(times["paged"])
        out[name] = {
            "slot_us": slot_us,
            "paged_us": paged_us,
            "ratio": paged_us / slot_us,
            "max_abs_diff": diff,
        }
        print(
            f"block {block_size:4d}  {name:30s} slot {slot_us:9.0f} us  paged {paged_us:9.0f} us  "
            f"ratio {paged_us / slot_us:.2f}",
            flush=True,
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block-sizes", default="16,32,64,128")
    args = parser.parse_args()
    if not build.available():
        print("the CPU kernels did not build here", file=sys.stderr)
        return 1
    rng = np.random.default_rng(0)
    load_before = os.getloadavg()[0]
    results = {int(bs): run(int(bs), rng) for bs in args.block_sizes.split(",")}
    record = {"load_1min": [load_before, os.getloadavg()[0]], "cpu": os.cpu_count(), "results": results}
    (HERE / "paged_attention.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# CPU attention kernel: paged KV cache vs slot cache",
        "",
        f"Median of {ROUNDS} rounds x {CALLS} calls, alternating; microseconds per call; "
        f"1-minute load {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
        "(shared machine). Ratio = paged / slot.",
        "",
        "| block size | step | slot cache | paged | ratio |",
        "|---:|---|---:|---:|---:|",
    ]
    for bs, per in results.items():
        for name, r in per.items():
            lines.append(f"| {bs} | {name} | {r['slot_us']:.0f} | {r['paged_us']:.0f} | {r['ratio']:.2f} |")
    (HERE / "paged_attention.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
