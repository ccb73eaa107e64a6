"""Weight-matmul microbenchmark: every matrix product of one SmolLM2-135M forward, per method.

For M activation rows (1 and 4: decode of a few slots; 32 and 64: decode of many; 256: a
prefill chunk) one jitted function runs the 30 layers' four products (QKV 576->960, output
576->576, gate/up 576->3072, down 1536->576, chained as in the model) and the tied LM head
(576->49152). Methods:

  xla-f32      float32 weights, XLA's dot (the fp32 default today for more than 4 rows)
  xla-bf16     bfloat16 weights, XLA's dot with f32 accumulation
  xla-int8     per-channel int8 weights, XLA's dot with YNNPACK's convert fusion (engine's int8)
  kernel-f32   float32 weights, the native dense kernel (cpu_matmul_f32, <= 4 rows only)
  kernel-s8    per-channel int8 weights, the native kernel (cpu_matmul_s8, <= 4 rows only)
  quant-q4_1   the GGUF as stored: Q4_1 layers, Q8_0 head, the block kernel (quant_kernels.cc)
  quant-q4_0 / quant-q8_0   every matrix in that format, the block kernel
  quant-q4_1-x16   quant-q4_1 in the engine's 16-row packed layout (`quant.pack16`, where the
                   library has AVX-512 VNNI): decode rows as the engine runs them
  quant-q4_1-prompt  quant-q4_1 with every row a prompt row (`float_from=0`): dequantized panels
                   times bfloat16 (AVX512_BF16) or float32 rows
  quant-q4_1-x16-prompt  the same on the packed layout: prefill as the engine runs it

Reported per (method, rows): seconds per forward (best and median of `--reps`), weight bytes
streamed per forward and the resulting GB/s, GFLOP/s, and rows/s ("tok/s-equivalent": the
tokens per second these products alone would allow). The machine is shared: the 1-minute load
average is recorded with every row, and methods alternate inside each repetition so load
changes hit them alike.

    .venv/bin/python bench/model/bench_quant_kernels.py [--rows 1,4,32,64,256] [--reps 7]

On a busy machine wall time mostly measures the neighbours; one thread per method and its CPU
seconds (`cpu_s`, process time) compare the methods' efficiency instead:

    INFERENCE_APP_KERNEL_THREADS=1 XLA_FLAGS="--xla_cpu_multi_thread_eigen=false" \
        .venv/bin/python bench/model/bench_quant_kernels.py --out bench/model/quant_kernels_1thread.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from inference_app.kernels import build, ops, quant_ops  # noqa: E402
from inference_app.model import quant  # noqa: E402
from inference_app.model.transformer import quantize_int8  # noqa: E402

D, F, QKV, V, LAYERS = 576, 1536, 960, 49152, 30
SHAPES = {"wqkv": (D, QKV), "wo": (D, D), "w_gate_up": (D, 2 * F), "w_down": (F, D)}  # [in, out]
YNN = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
METHODS = (
    "xla-f32",
    "xla-bf16",
    "xla-int8",
    "kernel-f32",
    "kernel-s8",
    "quant-q4_1",
    "quant-q4_0",
    "quant-q8_0",
    "quant-q4_1-x16",
    "quant-q4_1-prompt",
    "quant-q4_1-x16-prompt",
)


def random_weights(rng: np.random.Generator) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    layers = [
        {name: (rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32) for name, s in SHAPES.items()}
        for _ in range(LAYERS)
    ]
    return layers, (rng.standard_normal((D, V)) * 0.05).astype(np.float32)


def prepare(
    method: str, layers: list[dict[str, np.ndarray]], head: np.ndarray
) -> tuple[Any, Callable[..., jax.Array]]:
    """Device params for `method` and the product x [M, K] . w -> [M, N] it uses."""
    if method in ("xla-f32", "xla-bf16", "kernel-f32"):
        dtype = jnp.bfloat16 if method == "xla-bf16" else jnp.float32
        params = jax.tree.map(lambda a: jnp.asarray(a, dtype), (layers, head))
        if method == "kernel-f32":
            return params, ops.matmul_dense
        return params, lambda x, w: jnp.matmul(
            x, w.astype(x.dtype) if w.dtype == x.dtype else w, preferred_element_type=jnp.float32
        )
    if method in ("xla-int8", "kernel-s8"):
        params = jax.tree.map(
            jnp.asarray,
            ([{k: quantize_int8(w) for k, w in layer.items()} for layer in layers], quantize_int8(head)),
        )
        if method == "kernel-s8":
            return params, lambda x, w: ops.matmul_s8(x, w.q, w.scale)
        return params, lambda x, w: (x @ w.q.T.astype(x.dtype)) * w.scale
    name, _, variant = method.removeprefix("quant-").partition("-")
    fmt = quant._check_fmt(name)
    head_fmt = "q8_0" if fmt == "q4_1" else fmt  # the GGUF stores its embedding/head as Q8_0
    qlayers = [{k: quant.quantize(w, fmt) for k, w in layer.items()} for layer in layers]
    qhead = quant.quantize(head, head_fmt)
    if variant.startswith("x16"):
        if not build.packed_layout():
            raise SystemExit(f"{method}: this kernel level has no packed layout")
        qlayers = [{k: quant.pack16(w) for k, w in layer.items()} for layer in qlayers]
        qhead = quant.pack16(qhead)
    params = jax.tree.map(jnp.asarray, (qlayers, qhead))
    if variant.endswith("prompt"):
        return params, lambda x, w: quant_ops.matmul(x, w, 0)
    return params, quant_ops.matmul


def forward(params: Any, x: jax.Array, mm: Callable[..., jax.Array]) -> jax.Array:
    layers, head = params
    for layer in layers:
        h = mm(x, layer["wqkv"])[:, :D]
        h = mm(h, layer["wo"])
        g = mm(h, layer["w_gate_up"])[:, :F]
        x = x + mm(jax.nn.silu(g), layer["w_down"]) * 0.01
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)
    return mm(x, head)


def nbytes(params: Any) -> int:
    return sum(int(a.size) * a.dtype.itemsize for a in jax.tree.leaves(params))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1,4,32,64,256")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--out", default=str(HERE / "quant_kernels.json"))
    args = p.parse_args()
    if not build.available():
        raise SystemExit("the CPU kernels did not build (see the log); nothing to compare")
    rows_list = [int(r) for r in args.rows.split(",")]
    methods = args.methods.split(",")
    layers, head = random_weights(np.random.default_rng(0))
    prepared = {m: prepare(m, layers, head) for m in methods}
    flops_per_row = 2 * (LAYERS * sum(a * b for a, b in SHAPES.values()) + D * V)
    results: list[dict[str, Any]] = []
    for rows in rows_list:
        x = jnp.asarray(np.random.default_rng(1).standard_normal((rows, D)), jnp.float32)
        fns = {}
        for m in methods:
            if m.startswith("kernel-") and rows > ops.MAX_KERNEL_ROWS:
                continue
            params, mm = prepared[m]
            opts = YNN if m == "xla-int8" else {}
            fns[m] = jax.jit(lambda prm, xx, mm=mm: forward(prm, xx, mm), compiler_options=opts)
            fns[m](params, x).block_until_ready()  # compile
        times: dict[str, list[float]] = {m: [] for m in fns}
        cpu: dict[str, list[float]] = {m: [] for m in fns}
        for _ in range(args.reps):
            for m, fn in fns.items():  # alternate methods inside each repetition
                c0, t0 = time.process_time(), time.perf_counter()
                fn(prepared[m][0], x).block_until_ready()
                times[m].append(time.perf_counter() - t0)
                cpu[m].append(time.process_time() - c0)
        for m, ts in times.items():
            best, med = min(ts), statistics.median(ts)
            weight_bytes = nbytes(prepared[m][0])
            row = {
                "method": m,
                "rows": rows,
                "best_s": round(best, 5),
                "median_s": round(med, 5),
                "cpu_s": round(min(cpu[m]), 5),
                "weight_mb": round(weight_bytes / 1e6, 1),
                "gb_s": round(weight_bytes / best / 1e9, 1),
                "gflop_s": round(flops_per_row * rows / best / 1e9, 1),
                "rows_s": round(rows / best, 1),
                "load": round(os.getloadavg()[0], 2),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    out = {
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "kernel_level": build.levels()[0].name,
        "jax": jax.__version__,
        "started_load": results[0]["load"] if results else None,
        "results": results,
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    Path(args.out).with_suffix(".md").write_text(table(out))
    print(table(out))


def table(out: dict[str, Any]) -> str:
    lines = [
        f"Kernel level `{out['kernel_level']}`, {out['cpus']} CPUs, jax {out['jax']}. Per forward's "
        "weight products: best of the repetitions (median in brackets); GB/s of weights streamed; "
        "rows/s = tokens per second these products alone allow.",
        "",
        "| rows | method | weights MB | ms best (median) | CPU ms | GB/s | GFLOP/s | rows/s | load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in out["results"]:
        lines.append(
            f"| {r['rows']} | {r['method']} | {r['weight_mb']} | {r['best_s'] * 1e3:.1f} "
            f"({r['median_s'] * 1e3:.1f}) | {r['cpu_s'] * 1e3:.1f} | {r['gb_s']} | {r['gflop_s']} | "
            f"{r['rows_s']} | {r['load']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
