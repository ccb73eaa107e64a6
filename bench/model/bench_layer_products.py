"""The four weight products of one SmolLM2 layer (QKV 576->960, output 576->576, gate/up
576->3072, down 1536->576) per path of the block kernel, against XLA's float32 dot.

Paths (Q4_1 weights, `kernels/quant_kernels.cc`):
  int8-rows     decode rows, the GGUF's row layout (activations rounded to int8 per block)
  int8-x16      decode rows, the engine's 16-row packed layout (`quant.pack16`)
  prompt-rows   prompt rows (`float_from=0`): dequantized panels, bfloat16 or float32 rows
  prompt-x16    prompt rows on the packed layout (what the engine's prefill runs)
  xla-f32       the dequantized weights as float32, XLA's dot

Each product is timed alone (best of 5 blocks of 20 calls); the table sums the four per row
count and gives GFLOP/s. Writes bench/model/layer_products.{json,md}.

    .venv/bin/python bench/model/bench_layer_products.py [--rows 1,4,32,64,256]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from inference_app.kernels import build, quant_ops  # noqa: E402
from inference_app.model import quant  # noqa: E402

SHAPES = {"wqkv": (576, 960), "wo": (576, 576), "w_gate_up": (576, 3072), "w_down": (1536, 576)}  # [in, out]
PATHS = ("int8-rows", "int8-x16", "prompt-rows", "prompt-x16", "xla-f32")


def best_time(fn: Callable[[], jax.Array], reps: int = 20) -> float:
    fn().block_until_ready()
    blocks = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            r = fn()
        r.block_until_ready()
        blocks.append((time.perf_counter() - t0) / reps)
    return min(blocks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1,4,32,64,256")
    p.add_argument("--out", default=str(HERE / "layer_products.json"))
    args = p.parse_args()
    if not build.available():
        raise SystemExit("the CPU kernels did not build; nothing to measure")
    rng = np.random.default_rng(0)
    blocks = {
        n: quant.quantize(rng.standard_normal(s).astype(np.float32) / 30, "q4_1") for n, s in SHAPES.items()
    }
    weights: dict[str, dict[str, object]] = {
        "rows": {n: jax.tree.map(jnp.asarray, w) for n, w in blocks.items()},
        "f32": {n: jnp.asarray(quant.dequantize(w).T) for n, w in blocks.items()},
    }
    paths = [p for p in PATHS if build.packed_layout() or "x16" not in p]
    if build.packed_layout():
        weights["x16"] = {n: jax.tree.map(jnp.asarray, quant.pack16(w)) for n, w in blocks.items()}
    int8 = jax.jit(lambda x, w: quant_ops.matmul(x, w))
    prompt = jax.jit(lambda x, w: quant_ops.matmul(x, w, 0))
    dot = jax.jit(lambda x, w: x @ w)
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        total = {path: 0.0 for path in paths}
        for name, (k, _) in SHAPES.items():
            x = jnp.asarray(rng.standard_normal((rows, k)).astype(np.float32))
            for path in paths:
                kind, _, layout = path.partition("-")
                if kind == "xla":
                    total[path] += best_time(lambda x=x, w=weights["f32"][name]: dot(x, w))
                else:
                    fn = int8 if kind == "int8" else prompt
                    total[path] += best_time(lambda x=x, w=weights[layout][name], fn=fn: fn(x, w))
        flops = 2 * rows * sum(a * b for a, b in SHAPES.values())
        row = {
            "rows": rows,
            **{p: {"ms": round(t * 1e3, 3), "gflop_s": round(flops / t / 1e9)} for p, t in total.items()},
        }
        results.append(row)
        print(json.dumps(row), flush=True)
    out = {
        "kernel_level": build.levels()[0].name,
        "prompt_rows": "bfloat16" if build.prompt_rows_bf16() else "float32",
        "cpus": os.cpu_count(),
        "load": round(os.getloadavg()[0], 2),
        "results": results,
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    md = [
        f"Kernel level `{out['kernel_level']}` (prompt rows in {out['prompt_rows']}), {out['cpus']} CPUs, "
        f"load {out['load']}. The four products of one layer, ms (GFLOP/s).",
        "",
        "| rows | " + " | ".join(paths) + " |",
        "|---:|" + "---:|" * len(paths),
    ]
    for r in results:
        md.append(
            f"| {r['rows']} | " + " | ".join(f"{r[p]['ms']:.3f} ({r[p]['gflop_s']})" for p in paths) + " |"
        )
    Path(args.out).with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
