"""Drive a JaxEngine by hand (no orchestrator): one prompt per slot, all decoded together
(`decode_all`), or prompts added as slots free up and prefilled in chunks (`run_chunked`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from inference_app.engine import SamplingParams
from inference_app.engine.api import TokenLogprobs
from inference_app.engine.engine import JaxEngine
from inference_app.model.loader import HostWeights, LoadedModel


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


def decode_logprobs(
    engine: JaxEngine, prompts: Sequence[list[int]], steps: int, top: int = 5
) -> list[list[TokenLogprobs]]:
    """Greedy decoding as `decode_all`, each token with its log-probability and `top` alternatives."""
    sp = SamplingParams(logprobs=top)
    outs = []
    for slot, ids in enumerate(prompts):
        prefix = engine.transfer(engine.prefill(ids, sp))
        engine.insert(prefix, slot)
        assert prefix.logprobs is not None
        outs.append([prefix.logprobs])
    for _ in range(steps - 1):
        step = engine.generate().logprobs
        assert step is not None
        host = step.host()
        for slot, out in enumerate(outs):
            out.append(host.row(slot, top))
    for slot in range(len(prompts)):
        engine.release(slot)
    return outs


def decode_greedy(engine: JaxEngine, prompts: Sequence[list[int]], steps: int) -> list[list[int]]:
    return decode_all(engine, prompts, [SamplingParams()] * len(prompts), steps)


def run_chunked(
    engine: JaxEngine,
    prompts: list[list[int]],
    sampling: list[SamplingParams],
    steps: int,
    stagger: int = 0,
    max_new_tokens: int | None = None,
    logprobs: list[list[TokenLogprobs]] | None = None,
) -> list[list[int]]:
    """Prompt i starts in the lowest free slot once one is free (and not before step i * stagger);
    `max_new_tokens` is what each request reserves (None: up to the engine's sequence limit).
    With `logprobs` (a list to fill; the samplings must ask for `top` logprobs), each token's
    log-probability and alternatives are appended per prompt."""
    outs: list[list[int]] = [[] for _ in prompts]
    if logprobs is not None:
        logprobs[:] = [[] for _ in prompts]
    slot_of: dict[int, int] = {}
    waiting = list(range(len(prompts)))
    step = 0
    while any(len(o) < steps for o in outs):
        busy = set(slot_of.values())
        while waiting and len(busy) < engine.max_slots and waiting[0] * stagger <= step:
            i = waiting.pop(0)
            slot = min(set(range(engine.max_slots)) - busy)
            engine.add_prompt(slot, prompts[i], sampling[i], max_new_tokens)
            slot_of[i], busy = slot, busy | {slot}
        out = engine.generate()
        tokens = np.asarray(out.tokens)
        rows = out.logprobs.host() if logprobs is not None and out.logprobs is not None else None
        for i, slot in list(slot_of.items()):
            if slot in out.slots:
                outs[i].append(int(tokens[slot]))
                if logprobs is not None:
                    assert rows is not None, "the samplings must ask for logprobs"
                    logprobs[i].append(rows.row(slot, sampling[i].logprobs or 0))
                if len(outs[i]) == steps:
                    engine.release(slot)
                    del slot_of[i]
        step += 1
    return outs


def assert_same_logprobs(
    got: Sequence[Sequence[TokenLogprobs]], want: Sequence[Sequence[TokenLogprobs]], atol: float = 1e-3
) -> None:
    """The same tokens, each with the same log-probability and top values within `atol` (float32
    sums in another order differ in the last bits). The top values come sorted, so a near-tie
    that swaps two alternatives still compares equal."""
    assert [[t.token for t in r] for r in got] == [[t.token for t in r] for r in want]
    for got_row, want_row in zip(got, want, strict=True):
        for a, b in zip(got_row, want_row, strict=True):
            values_a = [a.logprob, *(v for _, v in a.top)]
            np.testing.assert_allclose(values_a, [b.logprob, *(v for _, v in b.top)], atol=atol)


def first_layers(model: LoadedModel, n: int) -> LoadedModel:
    """`model` cut to its first `n` layers (host weights), tokenizer and format unchanged."""
    params = model.weights.host()
    return LoadedModel(
        dataclasses.replace(model.config, num_layers=n),
        HostWeights({**params, "layers": params["layers"][:n]}),
        model.tokenizer,
        model.format,
    )
