"""llama.cpp's own numbers for `int8_quality.py`: perplexity and greedy tokens of the same GGUF.

Runs under llama.cpp's Python (`.work/llamacpp/bin/python`, made by `bench/serving/llamacpp.sh
setup`) with `LLAMA_CPP_LIB_PATH` at the libraries built there, not in the project venv. It reads
token ids (never text, so both sides see the same ids) as JSON on stdin:

    {"model": PATH, "text": [ids], "prompts": [[ids], ...], "new_tokens": N}

and writes {"perplexity": float, "greedy": [[ids], ...], "llama_cpp": version} to stdout.
llama.cpp's defaults otherwise: its threads, an f16 KV cache, its CPU kernels (Q4_1/Q8_0 weights
times q8_1/q8_0-rounded activations).
"""

from __future__ import annotations

import json
import sys

import llama_cpp
import numpy as np


def main() -> int:
    job = json.load(sys.stdin)
    text, prompts, new_tokens = job["text"], job["prompts"], job["new_tokens"]
    n_ctx = max(len(text), *(len(p) + new_tokens for p in prompts)) + 8
    llm = llama_cpp.Llama(job["model"], n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False)

    llm.reset()
    llm.eval(text)
    logits = np.asarray(llm.scores[: len(text)], np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    nll = -logp[np.arange(len(text) - 1), text[1:]]

    greedy = []
    for prompt in prompts:
        llm.reset()
        llm.eval(prompt)
        out: list[int] = []
        for _ in range(new_tokens):
            out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([out[-1]])
        greedy.append(out)
    json.dump(
        {"perplexity": float(np.exp(nll.mean())), "greedy": greedy, "llama_cpp": llama_cpp.__version__},
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
