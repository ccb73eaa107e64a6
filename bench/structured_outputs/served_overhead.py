"""Per-token cost of a constrained request against an unconstrained one, through the orchestrator.

Builds the engine with default flags (embedded SmolLM2) and an Orchestrator (no HTTP), then runs
one request at a time (batch 1, greedy, `--tokens` tokens each), alternating unconstrained and
constrained so both see the same machine load. A request's time per output token is (finish - first
token) / (tokens - 1): the decode steps only, prefill excluded. The unconstrained request ignores
EOS; the constrained one follows a JSON schema (an array of at least 40 digits) too long to finish
within the budget, so both produce exactly `--tokens` tokens. Per constrained token the extra work
is: the step waits for its token on host (no overlap with the next step), the grammar advances and
fills the next mask (llguidance), the mask row goes to the device and the masked step unpacks it.

    .venv/bin/python bench/structured_outputs/served_overhead.py [--pairs 12] [--tokens 64]

Prints per-pair numbers and the medians; results.md beside this file records them.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from inference_app.engine import EngineSettings, SamplingParams
from inference_app.engine.engine import load_engine
from inference_app.orchestrator import Event, Failed, Finished, GenerationRequest, Orchestrator, TextDelta
from inference_app.orchestrator.grammar import GrammarSpec

SCHEMA = {
    "type": "object",
    "properties": {
        "values": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0, "maximum": 9},
            "minItems": 40,
            "maxItems": 40,
        }
    },
    "required": ["values"],
    "additionalProperties": False,
}


def per_token_s(orch: Orchestrator, request: GenerationRequest) -> float:
    """Seconds per output token after the first (decode steps only)."""
    first: list[float] = []
    done = threading.Event()
    end: list[Event] = []

    def sink(event: Event) -> None:
        if isinstance(event, TextDelta) and not first:
            first.append(time.perf_counter())
        if isinstance(event, Finished | Failed):
            end.append(event)
            done.set()

    orch.submit(request, sink)
    done.wait()
    finished = end[0]
    if not isinstance(finished, Finished) or finished.completion_tokens != request.max_tokens:
        raise RuntimeError(f"expected {request.max_tokens} tokens, got {finished}")
    return (time.perf_counter() - first[0]) / (request.max_tokens - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    engine = load_engine(EngineSettings())
    orch = Orchestrator(engine)
    orch.start()
    ids = tuple(engine.tokenizer.encode_chat([{"role": "user", "content": "List forty digits as JSON."}]))
    plain = GenerationRequest(ids, args.tokens, SamplingParams(), ignore_eos=True)
    grammar = GrammarSpec.json_schema(SCHEMA, strict=True)
    constrained = GenerationRequest(ids, args.tokens, SamplingParams(), grammar=grammar)
    for request in (plain, constrained):  # compile the masked variants; warm the grammar engine
        per_token_s(orch, request)
    rows = []
    for i in range(args.pairs):
        a, b = (plain, constrained) if i % 2 == 0 else (constrained, plain)
        t = {id(a): per_token_s(orch, a), id(b): per_token_s(orch, b)}
        rows.append((t[id(plain)], t[id(constrained)]))
        u, c = rows[-1]
        print(f"pair {i}: unconstrained {u * 1e3:.2f} ms/token, constrained {c * 1e3:.2f}")
    orch.stop()
    u = statistics.median(r[0] for r in rows)
    c = statistics.median(r[1] for r in rows)
    d = statistics.median(r[1] - r[0] for r in rows)
    print(
        f"median ms/token over {args.pairs} pairs ({args.tokens} tokens, batch 1, greedy): unconstrained "
        f"{u * 1e3:.2f}, constrained {c * 1e3:.2f}, paired difference {d * 1e3:+.2f} ({d / u:+.1%})"
    )


if __name__ == "__main__":
    main()
