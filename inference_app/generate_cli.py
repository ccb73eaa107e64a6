"""`python -m inference_app generate`: one prompt in, its continuation out (greedy by default).

The engine is sized to the request (one slot, the prompt's exact length as the only prefill
bucket) so a single generation compiles as little as possible.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from inference_app.engine.api import EngineSettings, SamplingParams
from inference_app.model.architectures import ARCHITECTURES
from inference_app.models import CATALOG, DEFAULT_MODEL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--max-tokens", type=int, required=True, help="number of new tokens (>= 1)")
    parser.add_argument(
        "--chat", action="store_true", help="wrap the prompt as one user message with the chat template"
    )
    parser.add_argument("--json", action="store_true", help='print {"prompt_ids", "token_ids", "text"}')
    parser.add_argument("--stop-at-eos", action="store_true", help="stop after an end-of-sequence token")
    parser.add_argument(
        "--model",
        choices=sorted({*CATALOG, *ARCHITECTURES}),
        help=f"embedded model (default {DEFAULT_MODEL}), or with --model-path of a MaxText checkpoint its architecture",
    )
    parser.add_argument("--model-path", help="GGUF file, Hugging Face or MaxText (Orbax) directory (local or gs://)")
    parser.add_argument("--tokenizer-path", help="Hugging Face directory with the tokenizer (MaxText checkpoints)")
    parser.add_argument("--weight-dtype", default="auto", choices=["auto", "float32", "bfloat16", "int8"])
    parser.add_argument("--kv-dtype", default="auto", choices=["auto", "float32", "bfloat16", "int8"])
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--compilation-cache-dir", default=".jax_cache")


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

    from inference_app.engine.engine import JaxEngine, enable_compilation_cache, model_for

    model_name = args.model if args.model_path else (args.model or DEFAULT_MODEL)
    base = EngineSettings(
        model=model_name,
        model_path=args.model_path,
        tokenizer_path=args.tokenizer_path,
        max_slots=1,
        weight_dtype=args.weight_dtype,
        kv_dtype=args.kv_dtype,
        compilation_cache_dir=args.compilation_cache_dir,
    )
    enable_compilation_cache(base.compilation_cache_dir)
    start = time.perf_counter()
    model = model_for(base)
    tok = model.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt
    prompt_ids = tok.encode(text)
    if not prompt_ids:
        raise ValueError("--prompt encodes to zero tokens")
    n = len(prompt_ids)
    settings = EngineSettings(
        model=base.model,
        model_path=base.model_path,
        tokenizer_path=base.tokenizer_path,
        max_slots=1,
        max_prefill_length=n,
        max_target_length=n + args.max_tokens + 1,
        weight_dtype=base.weight_dtype,
        kv_dtype=base.kv_dtype,
        compilation_cache_dir=base.compilation_cache_dir,
    )
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
