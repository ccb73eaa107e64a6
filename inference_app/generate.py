"""`python -m inference_app generate`: one prompt in, its continuation out (greedy by default).

The shortest path through the stack: catalog -> engine, driven directly (no orchestrator, no HTTP).

The engine is sized to the request (one slot, the prompt's exact length as the only prefill
bucket) so a single generation compiles as little as possible.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any

from inference_app.engine.api import SamplingParams
from inference_app.engine.settings import add_engine_arguments, settings_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--max-tokens", type=int, required=True, help="number of new tokens (>= 1)")
    parser.add_argument(
        "--chat", action="store_true", help="wrap the prompt as one user message with the chat template"
    )
    parser.add_argument("--json", action="store_true", help='print {"prompt_ids", "token_ids", "text"}')
    parser.add_argument("--stop-at-eos", action="store_true", help="stop after an end-of-sequence token")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    # One slot, sized to this prompt (see `run`): the serving flags (slots, lengths, mode) do not apply.
    add_engine_arguments(parser, serving=False)


def main(args: argparse.Namespace) -> int:
    if args.max_tokens < 1:
        print("error: --max-tokens must be >= 1", file=sys.stderr)
        return 2
    try:
        result = run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({k: result[k] for k in ("prompt_ids", "token_ids", "text")}, ensure_ascii=False))
    else:
        print(result["text"])
        print(
            f"[{len(result['token_ids'])} tokens, first token {result['ttft_s']:.2f}s, "
            f"{result['decode_tok_s']:.1f} tok/s decode]",
            file=sys.stderr,
        )
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Generate for `args`; returns ids, text and timings."""
    import numpy as np

    from inference_app.engine.engine import JaxEngine, enable_compilation_cache, model_for, settings_to_serve

    base = settings_to_serve(dataclasses.replace(settings_from_args(args), max_slots=1))
    enable_compilation_cache(base.compilation_cache_dir)
    start = time.perf_counter()
    model = model_for(base)
    tok = model.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt
    prompt_ids = tok.encode(text)
    if not prompt_ids:
        raise ValueError("--prompt encodes to zero tokens")
    n = len(prompt_ids)
    settings = dataclasses.replace(base, max_prefill_length=n, max_target_length=n + args.max_tokens + 1)
    engine = JaxEngine(settings, model)
    sampling = SamplingParams(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed
    )
    prefix = engine.transfer(engine.prefill(prompt_ids, sampling))
    ttft = time.perf_counter() - start
    out = [prefix.first_token]
    stop = tok.eos_token_ids if args.stop_at_eos else frozenset()
    engine.insert(prefix, 0)
    decode_start = time.perf_counter()
    while len(out) < args.max_tokens and out[-1] not in stop:
        out.append(int(np.asarray(engine.generate().tokens)[0]))
        if len(out) == 2:  # the first step includes its compilation: rate counts the rest
            decode_start = time.perf_counter()
    decode_s = time.perf_counter() - decode_start
    shown = out[:-1] if out[-1] in stop else out
    return {
        "prompt_ids": prompt_ids,
        "token_ids": out,
        "text": tok.decode(shown),
        "ttft_s": ttft,
        "decode_tok_s": (len(out) - 2) / decode_s if len(out) > 2 else 0.0,
    }
