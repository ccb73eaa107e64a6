"""Drive a JaxEngine by hand (no orchestrator): one prompt per slot, all decoded together."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inference_app.engine import SamplingParams
from inference_app.engine.engine import JaxEngine


def decode_all(
    engine: JaxEngine, prompts: Sequence[list[int]], sampling: Sequence[SamplingParams], steps: int
) -> list[list[int]]:
    """Prompt i goes to slot i with sampling[i]; returns `steps` tokens per prompt, slots freed."""
    outs = []
    for slot, (ids, sp) in enumerate(zip(prompts, sampling, strict=True)):
        prefix = engine.transfer(engine.prefill(ids, sp))
        engine.insert(prefix, slot)
        outs.append([prefix.first_token])
    for _ in range(steps - 1):
        toks = np.asarray(engine.generate().tokens)
        for slot, out in enumerate(outs):
            out.append(int(toks[slot]))
    for slot in range(len(prompts)):
        engine.release(slot)
    return outs


def decode_greedy(engine: JaxEngine, prompts: Sequence[list[int]], steps: int) -> list[list[int]]:
    return decode_all(engine, prompts, [SamplingParams()] * len(prompts), steps)
