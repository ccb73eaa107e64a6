"""Decode throughput and startup-to-first-token of the JAX engine on SmolLM2 (the issue's setup).

Per configuration: a 20-token prompt in every slot, 128 new tokens greedy, each step's tokens
copied to host while the next step runs, as the orchestrator does (until commit bf8fe9a the copy
waited for each step before dispatching the next: ~8% slower at batch 1). Startup-to-first-token is
measured in a fresh process
(model load + compilation + prefill), once with an empty and once with a warm persistent
compilation cache. Results go to bench/model/results.json and results.md; the 1-minute load
average is recorded because the machine is shared.

Run: .venv/bin/python bench/model/bench_decode.py [--configs fp32-b1,int8-b1,bf16-b32,...] [--no-startup]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROMPT_TOKENS = 20
NEW_TOKENS = 128
CONFIGS = {  # name -> (weight dtype, kv dtype, slots)
    "fp32-b1": ("float32", "float32", 1),
    "int8-b1": ("int8", "float32", 1),
    "fp32-b8": ("float32", "float32", 8),
    "int8-b8": ("int8", "float32", 8),
    "gguf-b1": ("gguf", "float32", 1),  # the GGUF's own blocks (Q4_1 layers, Q8_0 table)
    "gguf-b8": ("gguf", "float32", 8),
    "gguf-b32": ("gguf", "float32", 32),
    "fp32-b32": ("float32", "float32", 32),
    "int8-b32": ("int8", "float32", 32),
    "gguf-b64": ("gguf", "float32", 64),
    "fp32-b64": ("float32", "float32", 64),
    "bf16-b1": ("bfloat16", "float32", 1),
    "bf16-b32": ("bfloat16", "float32", 32),
    "bf16-b64": ("bfloat16", "float32", 64),
    "fp32-b1-int8kv": ("float32", "int8", 1),
}


def loadavg() -> float:
    return os.getloadavg()[0]


def decode_run(name: str, reps: int) -> dict[str, Any]:
    import numpy as np

    from inference_app.engine import EngineSettings, SamplingParams
    from inference_app.engine.engine import load_engine

    wd, kd, slots = CONFIGS[name]
    settings = EngineSettings(
        max_slots=slots,
        max_prefill_length=32,
        max_target_length=PROMPT_TOKENS + NEW_TOKENS + 1,
        weight_dtype=wd,  # type: ignore[arg-type]
        kv_dtype=kd,  # type: ignore[arg-type]
    )
    engine = load_engine(settings)
    engine.warmup()
    prompt = engine.tokenizer.encode("The history of the city began long ago, when a small group of")
    prompt = (prompt * 4)[:PROMPT_TOKENS]
    best = 0.0
    rates = []
    load_before = loadavg()
    for _ in range(reps):
        for s in range(slots):
            engine.insert(engine.transfer(engine.prefill(prompt, SamplingParams())), s)
        start = time.perf_counter()
        # As in the orchestrator: the next step is dispatched before the previous step's tokens
        # are copied to host (its detokenize thread reads them while the device computes).
        pending = None
        for _ in range(NEW_TOKENS - 1):  # the first token came from prefill
            out = engine.generate()
            if pending is not None:
                np.asarray(pending.tokens)
            pending = out
        if pending is not None:
            np.asarray(pending.tokens)
        elapsed = time.perf_counter() - start
        for s in range(slots):
            engine.release(s)
        rate = slots * (NEW_TOKENS - 1) / elapsed
        rates.append(rate)
        best = max(best, rate)
    return {
        "config": name,
        "weights": wd,
        "kv": kd,
        "slots": slots,
        "tok_s_best": round(best, 1),
        "tok_s_median": round(statistics.median(rates), 1),
        "tok_s_all": [round(r, 1) for r in rates],
        "step_ms_best": round(1000 * slots / best, 2),
        "load_before": round(load_before, 2),
        "load_after": round(loadavg(), 2),
    }


STARTUP_CODE = """
import time, sys
t0 = float(sys.argv[1])
from inference_app.engine import EngineSettings, SamplingParams
from inference_app.engine.engine import load_engine
e = load_engine(
    EngineSettings(
        max_slots=1, max_prefill_length=32, max_target_length=149, compilation_cache_dir=sys.argv[2]
    )
)
p = e.prefill(e.tokenizer.encode("Hello there, how are you today?"), SamplingParams())
t1 = time.time()
e.insert(p, 0)
int(e.generate().tokens[0])
print("FIRST", t1 - t0, time.time() - t0)
"""


def startup() -> dict[str, Any]:
    cache = tempfile.mkdtemp(prefix="jaxcache-")
    out: dict[str, Any] = {}
    try:
        for label in ("cold_cache", "warm_cache"):
            t0 = time.time()
            proc = subprocess.run(
                [sys.executable, "-c", STARTUP_CODE, str(t0), cache],
                capture_output=True,
                text=True,
                check=True,
                cwd=HERE.parent.parent,
            )
            line = next(x for x in proc.stdout.splitlines() if x.startswith("FIRST"))
            first, second = (float(v) for v in line.split()[1:])
            out[label] = {"first_token_s": round(first, 2), "second_token_s": round(second, 2)}
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    out["load"] = round(loadavg(), 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--configs", default="fp32-b1,int8-b1,bf16-b1,fp32-b32,int8-b32,bf16-b32,fp32-b1-int8kv"
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-startup", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results.json"))
    args = parser.parse_args()
    import jax

    results: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}",
        "setup": f"SmolLM2-135M, {PROMPT_TOKENS}-token prompt, {NEW_TOKENS} new tokens, greedy, "
        "host copy of each step overlapping the next",
        "decode": [],
    }
    # A name may repeat (fp32-b1,gguf-b1,fp32-b1,gguf-b1): alternating runs of two configurations
    # see the same shared-machine load.
    for name in args.configs.split(","):
        results["decode"].append(decode_run(name, args.reps))
        print(json.dumps(results["decode"][-1]), flush=True)  # progress: runs are minutes each
    if not args.no_startup:
        results["startup_to_first_token"] = startup()
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    md = [
        f"# Engine benchmark ({results['date_utc']} UTC)",
        "",
        f"{results['machine']}; {results['setup']}.",
        "",
        "| config | weights | KV | slots | tok/s (median) | tok/s (best) | all runs | ms/step (best) "
        "| load avg before/after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["decode"]:
        md.append(
            f"| {r['config']} | {r['weights']} | {r['kv']} | {r['slots']} | {r['tok_s_median']} "
            f"| {r['tok_s_best']} | "
            f"{r['tok_s_all']} | {r['step_ms_best']} | {r['load_before']} / {r['load_after']} |"
        )
    if "startup_to_first_token" in results:
        s = results["startup_to_first_token"]
        md += [
            "",
            "Startup to first token (fresh process: imports, model load, compilation, prefill):",
            f"empty compilation cache {s['cold_cache']['first_token_s']} s, "
            f"warm persistent cache {s['warm_cache']['first_token_s']} s (load avg {s['load']}).",
        ]
    Path(args.out).with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
