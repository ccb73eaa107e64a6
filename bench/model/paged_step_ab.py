"""Paired A/B helper for the paged KV cache: decode tok/s of the engine over its chunked-prefill
path (the CPU default) at B slots, with no warm-up, so only the few step shapes it reaches compile
(a full warm-up takes minutes on a loaded 2-core machine).

Run it in each tree with the same venv, alternating A and B because the machine is shared:

    PYTHONPATH=<tree> .venv/bin/python bench/model/paged_step_ab.py B [--context 1024]

Both trees get explicit `max_slots=B` and context, so the paged cache holds exactly B full
sequences and the comparison is of the engines, not of their memory-sized defaults.
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import time

import numpy as np

from inference_app.engine import EngineSettings, SamplingParams
from inference_app.engine.engine import load_engine

PROMPT_TOKENS = 20
TIMED_STEPS = 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("slots", type=int)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    b = args.slots
    engine = load_engine(EngineSettings(max_slots=b, max_target_length=args.context))
    prompt = engine.tokenizer.encode("The history of the city began long ago, when a small group of")
    prompt = (prompt * 2)[:PROMPT_TOKENS]
    # The paged engine takes each request's token budget (for block admission); main's does not.
    takes_budget = "max_new_tokens" in inspect.signature(engine.add_prompt).parameters
    budget = {"max_new_tokens": 200} if takes_budget else {}
    for slot in range(b):
        engine.add_prompt(slot, prompt, SamplingParams(), **budget)
    for _ in range(6):  # prefill steps, and the compile of the decode shape
        np.asarray(engine.generate().tokens)
    rates = []
    for _ in range(args.reps):
        start = time.perf_counter()
        pending = None
        for _ in range(TIMED_STEPS):  # as the orchestrator: dispatch, then read the previous step
            out = engine.generate()
            if pending is not None:
                np.asarray(pending.tokens)
            pending = out
        if pending is not None:
            np.asarray(pending.tokens)
        rates.append(b * TIMED_STEPS / (time.perf_counter() - start))
    print(
        f"RESULT b={b} tok/s median {statistics.median(rates):.1f} "
        f"all {[round(r, 1) for r in rates]} load {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
