"""Checkpoint load throughput and peak memory (issue 16): a synthetic Llama in the real Hugging
Face layout (tests/inference_app/model/synthetic_llama.py; BIG = 2.15 GB of fp32) loaded from local
disk over 8 virtual CPU devices (fsdp 2 x tensor 4), each run in a fresh process
(tests/inference_app/model/streaming_check.py).

Configurations: streamed as fp32, bf16 and int8 (what the engine does now), and `host-fp32`,
the way before streaming (whole host arrays, then one device_put). Every configuration runs
once with the page cache dropped (`/proc/sys/vm/drop_caches`, when permitted: a cold read from
disk) and then warm. The machine is a shared 2-core VM: the 1-minute load average is recorded
with each run, and throughput figures are only comparable within one recording.

Run: .venv/bin/python bench/model/bench_load.py [--size big|small] [--dir DIR] [--configs a,b]
Writes bench/model/load_results.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {  # name -> streaming_check flags
    "stream-fp32": ["--weight-dtype", "float32"],
    "stream-bf16": ["--weight-dtype", "bfloat16"],
    "stream-int8": ["--weight-dtype", "int8"],
    "host-fp32": ["--weight-dtype", "float32", "--host-load"],
}


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1")
        return True
    except OSError:
        return False


def run(path: Path, flags: list[str]) -> dict[str, Any]:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "tests.inference_app.model.streaming_check", str(path), *flags]
    before = os.getloadavg()[0]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out = dict(json.loads(line[len("RESULT ") :]))
    out["load_before"], out["load_after"] = round(before, 2), round(os.getloadavg()[0], 2)
    return out


def main() -> int:
    from tests.inference_app.model.synthetic_llama import BIG, SMALL, write_synthetic_llama
    from tests.inference_app.model.test_streaming import _tokenizer_dir

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["big", "small"], default="big")
    ap.add_argument("--dir", default="/tmp/bench_load")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--out", default=str(HERE / "load_results.json"))
    args = ap.parse_args()
    base = Path(args.dir) / args.size
    ckpt = base / "ckpt"
    if not (ckpt / "config.json").exists():
        write_synthetic_llama(ckpt, BIG if args.size == "big" else SMALL, _tokenizer_dir(base / "tok"))
    rows = []
    for name in args.configs.split(","):
        for cache in ("cold", "warm"):
            dropped = drop_page_cache() if cache == "cold" else False
            r = run(ckpt, CONFIGS[name])
            r.update(config=name, cache=cache if cache == "warm" or dropped else "warm (could not drop)")
            rows.append(r)
            print(json.dumps(r), flush=True)
    python = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else "python"
    cmd = f"{python} bench/model/bench_load.py " + " ".join(sys.argv[1:])
    results = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "command": cmd.strip(),
        "runs": rows,
    }
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    gb = rows[0]["checkpoint_bytes"] / 1e9
    md = [
        f"# Checkpoint load benchmark ({results['date_utc']} UTC)",
        "",
        f"{results['machine']}; synthetic Llama ({args.size}, {gb:.2f} GB fp32 safetensors) loaded from "
        "local disk onto 8 virtual CPU devices (fsdp 2 x tensor 4), one fresh process per run. "
        f"Command: `{results['command']}`.",
        "",
        "`extra` = peak RSS during placement - RSS before - bytes placed on the devices (on CPU the "
        "devices are this process's memory), i.e. what loading held on top of the model.",
        "",
        "| config | page cache | seconds | GB/s (checkpoint bytes / s) | CPU seconds (all threads) "
        "| placed GB | extra GB | extra / checkpoint | load avg before/after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['config']} | {r['cache']} | {r['seconds']:.2f} | {r['gb_per_s']:.3f} "
            f"| {r['cpu_seconds']:.1f} | "
            f"{r['placed_bytes'] / 1e9:.2f} | {r['extra_bytes'] / 1e9:.3f} | "
            f"{r['extra_bytes'] / r['checkpoint_bytes']:.1%} | {r['load_before']} / {r['load_after']} |"
        )
    Path(args.out).with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
