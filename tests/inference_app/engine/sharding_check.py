"""Run one model on several mesh layouts and print the greedy tokens of each as JSON.

Executed in a subprocess by test_sharding.py, because the virtual device count
(XLA_FLAGS=--xla_force_host_platform_device_count=8) must be set before JAX starts.
Usage: python -m tests.inference_app.engine.sharding_check MODEL_PATH_OR_NAME STEPS
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import cast

import jax
from jax.sharding import NamedSharding

from inference_app.engine import EngineSettings
from inference_app.engine.engine import JaxEngine, model_for
from tests.inference_app.engine_runs import decode_greedy

PROMPTS = [
    [5, 6, 7],
    [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1100],
    [42] * 20,
    [9, 8, 7, 6, 5],
    [1, 4093, 198, 2683, 359],
    [3000, 3001],
    list(range(2000, 2017)),
    [77, 78, 79, 80, 81, 82, 83],
]


def main() -> None:
    source, steps = sys.argv[1], int(sys.argv[2])
    devices = jax.devices()
    assert len(devices) == 8, f"expected 8 virtual devices, got {len(devices)}"
    if source.endswith(".gguf") or "/" in source:
        base = EngineSettings(model=None, model_path=source)
    else:
        base = EngineSettings(model=source)
    base = dataclasses.replace(base, max_slots=8, max_prefill_length=32, max_target_length=64)
    model = model_for(base)
    layouts = {
        "1dev_batch8": (base, devices[:1]),
        "tensor4_ar2": (
            dataclasses.replace(base, ici_autoregressive_parallelism=2, ici_tensor_parallelism=4),
            devices,
        ),
        "fsdp2_tensor4": (
            dataclasses.replace(base, ici_fsdp_parallelism=2, ici_tensor_parallelism=4),
            devices,
        ),
        "disagg_4_4": (dataclasses.replace(base, mode="disaggregated", ici_tensor_parallelism=4), devices),
        "tensor4_ar2_int8kv": (
            dataclasses.replace(
                base, kv_dtype="int8", ici_autoregressive_parallelism=2, ici_tensor_parallelism=4
            ),
            devices,
        ),
    }
    result: dict[str, object] = {}
    for name, (settings, devs) in layouts.items():
        engine = JaxEngine(settings, model, devs)
        result[name] = decode_greedy(engine, PROMPTS, steps)
        if name == "1dev_batch8":  # each prompt alone on the same engine: 1-row steps
            result["1dev_batch1"] = [decode_greedy(engine, [p], steps)[0] for p in PROMPTS]
        for weight in ("wqkv", "w_gate_up"):
            w = engine.generate_params["layers"][0][weight]
            sharding = w.q.sharding if hasattr(w, "q") else w.sharding
            result[f"{name}:{weight}_spec"] = str(cast(NamedSharding, sharding).spec)
        layer = engine._cache[0]  # a slot cache ("k", "v") on a mesh; the paged cache ("kv") on one device
        cache = layer["k"] if "k" in layer else layer["kv"]
        result[name + ":cache_spec"] = str(cast(NamedSharding, cache.sharding).spec)
        result[name + ":devices"] = [
            sorted(d.id for d in engine.prefill_mesh.devices.flat),
            sorted(d.id for d in engine.generate_mesh.devices.flat),
        ]
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
