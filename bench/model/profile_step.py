"""Where a batch-1 decode step's time goes: host work around the step vs the compiled step.

One slot, the CPU defaults (chunked prefill: every step is the engine's one jitted step), greedy, a short
prompt, then `--steps` decode steps, in three ways:

  served     engine.generate() + the host copy of its tokens, one after the other (what the
             orchestrator's loop does, less its queue handling): the per-token time
  compiled   the jitted step function alone, called again and again with the step's inputs
             (no step planning, no sampling-parameter gathering, no position bookkeeping)
  dispatch   the same jitted call with a cheap argument set up front, not waited for: the
             Python + pjit dispatch cost per call

served - compiled = host work per step (planning, numpy gathers, dispatch, the copy);
compiled = the device's work (weights streamed through the kernels, attention, norms,
sampling). `bench_quant_kernels.py` splits the compiled part further (weight products alone).
Minimum and median of `--reps` blocks are printed with the load average (shared machine).

    .venv/bin/python bench/model/profile_step.py [--weight-dtype int8] [--steps 64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from inference_app.engine import EngineSettings, SamplingParams
from inference_app.engine.engine import load_engine
from inference_app.engine.steps import sampler_for


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weight-dtype", default="auto")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    engine = load_engine(EngineSettings(max_slots=1, max_target_length=1024, weight_dtype=args.weight_dtype))
    engine.warmup()
    prompt = engine.tokenizer.encode("Write a long story about a lighthouse keeper and a storm.")
    served: list[float] = []
    compiled: list[float] = []
    dispatch: list[float] = []
    for _ in range(args.reps):
        engine.release(0)
        engine.add_prompt(0, prompt, SamplingParams(temperature=0.0, seed=0))
        while 0 not in engine._active:  # the prompt's chunks
            np.asarray(engine.generate().tokens)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            np.asarray(engine.generate().tokens)
        served.append((time.perf_counter() - t0) / args.steps)
        compiled.append(time_compiled(engine, args.steps))
        dispatch.append(time_dispatch(engine, args.steps))
    out = {
        "weight_dtype": args.weight_dtype,
        "steps": args.steps,
        "load": os.getloadavg()[0],
        "served_ms": summary(served),
        "compiled_ms": summary(compiled),
        "dispatch_ms": summary(dispatch),
    }
    out["host_ms"] = round(out["served_ms"]["min"] - out["compiled_ms"]["min"], 2)
    print(json.dumps(out))


@dataclass(frozen=True)
class Captured:
    """What `engine.generate` would pass its two jitted programs now (model step, then choice)."""

    inputs: Any  # StepInputs, on device
    picks: Any  # Picks, on device
    attn_len: int
    sampler: str


def capture_inputs(engine: Any) -> Captured:
    import jax

    plan, shape = engine.next_step()
    picks = engine.picks(plan)
    sampler = sampler_for(picks.sampling)
    return Captured(jax.device_put(engine.step_inputs(plan)), jax.device_put(picks), shape.attn_len, sampler)


def call_step(engine: Any, tokens: Any, cache: Any, step: Captured) -> tuple[Any, Any]:
    cache, logits = engine._step_fn(
        engine.generate_params, cache, tokens, step.inputs, attn_len=step.attn_len
    )
    tokens, _ = engine._choose_fn(tokens, logits, step.picks, sampler=step.sampler, logprobs=False)
    return tokens, cache


def time_compiled(engine: Any, steps: int) -> float:
    step = capture_inputs(engine)
    tokens, cache = engine._tokens, engine._cache
    t0 = time.perf_counter()
    for _ in range(steps):
        tokens, cache = call_step(engine, tokens, cache, step)
        tokens.block_until_ready()
    elapsed = (time.perf_counter() - t0) / steps
    engine._tokens, engine._cache = tokens, cache
    return elapsed


def time_dispatch(engine: Any, steps: int) -> float:
    """Seconds per call to hand the step to XLA (returns before the step has run)."""
    step = capture_inputs(engine)
    tokens, cache = engine._tokens, engine._cache
    spent = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        tokens, cache = call_step(engine, tokens, cache, step)
        spent += time.perf_counter() - t0
        tokens.block_until_ready()
    engine._tokens, engine._cache = tokens, cache
    return spent / steps


def summary(xs: list[float]) -> dict[str, float]:
    return {"min": round(min(xs) * 1e3, 2), "median": round(statistics.median(xs) * 1e3, 2)}


if __name__ == "__main__":
    main()
