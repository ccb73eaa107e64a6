"""Load a Hugging Face checkpoint streamed over 8 virtual CPU devices (fsdp 2 x tensor 4) and
report memory as JSON. Run in a subprocess by test_streaming.py (the device count must be set
before JAX starts) and by bench/model/bench_load.py.

Usage: python -m tests.inference_app.model.streaming_check CKPT_DIR [--logits] [--weight-dtype D]
       [--device-transpose auto|on|off] [--host-load]

Peak RSS is read from /proc/self/status VmHWM after resetting it (`/proc/self/clear_refs` 5)
just before placement; on CPU the placed weights live in this process's memory, so
`extra = peak - rss_before - placed` is what the loading itself held on top of the model.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import jax
import numpy as np

from inference_app.engine.sharding import make_mesh, param_shardings
from inference_app.model.loader import HostWeights, load_model
from inference_app.model.transformer import prefill
from inference_app.model.weights import MatrixFormat

PROMPT = [5, 17, 300, 1200, 7, 99, 4000, 12, 8, 15000, 3, 42]


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def placed_bytes(params: object) -> int:
    return sum(s.data.nbytes for leaf in jax.tree.leaves(params) for s in leaf.addressable_shards)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--logits", action="store_true", help="also compare logits with the host load")
    ap.add_argument("--weight-dtype", default="float32", choices=["float32", "bfloat16", "int8"])
    ap.add_argument("--device-transpose", choices=["auto", "on", "off"], default="auto")
    ap.add_argument(
        "--host-load",
        action="store_true",
        help="the pre-streaming way: whole host arrays, then one device_put (for comparison)",
    )
    a = ap.parse_args()
    devices = jax.devices()
    assert len(devices) == 8, f"expected 8 virtual devices, got {len(devices)}"
    mesh = make_mesh(devices, 2, 1, 4)
    int8 = a.weight_dtype == "int8"
    dtype = np.float32 if int8 else np.dtype(a.weight_dtype)
    matrices: MatrixFormat = "int8" if int8 else "float"
    model = load_model(a.path, dtype, matrices)
    if a.device_transpose != "auto":
        model.weights.device_transpose = a.device_transpose == "on"  # type: ignore[attr-defined]
    shardings = param_shardings(mesh, model.weights.abstract())
    ckpt_bytes = sum(f.stat().st_size for f in Path(a.path).glob("*.safetensors"))
    Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    if a.host_load:
        params = jax.block_until_ready(HostWeights(model.params).place(shardings))
    else:
        params = jax.block_until_ready(model.weights.place(shardings))
    seconds = time.perf_counter() - start
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    peak = _status("VmHWM")
    placed = placed_bytes(params)
    out = {
        "checkpoint_bytes": ckpt_bytes,
        "placed_bytes": placed,
        "rss_before": before,
        "peak_rss": peak,
        "extra_bytes": peak - before - placed,
        "seconds": seconds,
        "gb_per_s": ckpt_bytes / seconds / 1e9,
        # CPU time of all threads: less sensitive than wall time to other load on a shared VM
        "cpu_seconds": cpu_seconds,
    }
    if a.logits:
        ids = np.asarray([PROMPT], np.int32)
        n = np.asarray([len(PROMPT)], np.int32)
        fwd = jax.jit(prefill, static_argnums=1, static_argnames="all_logits")
        streamed = np.asarray(fwd(params, model.config, ids, n, all_logits=True)[0])
        del params
        host = load_model(a.path, dtype, matrices).params  # the whole-tensor host path
        one = jax.devices()[0]
        reference = np.asarray(fwd(jax.device_put(host, one), model.config, ids, n, all_logits=True)[0])
        out["logits_max_abs_diff"] = float(np.abs(streamed - reference).max())
        out["logits_std"] = float(reference.std())
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
