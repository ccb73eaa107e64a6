"""Quality of int8 weights, the GGUF's own block-quantized weights (Q4_1 layers, Q8_0 table, read
by the native kernel with int8 activations: the CPU serving default), int8 KV cache and bf16
weights versus fp32 on SmolLM2 (recorded). fp32 here is the GGUF dequantized: the same weights
transformers loads. When llama.cpp is built (`bench/serving/llamacpp.sh setup`), its own run of
the same file is a row too (`llamacpp_reference.py`), and the GGUF blocks are also compared with
it: the peer that reads the same blocks, written by nobody here.

* Perplexity of a fixed English text (teacher-forced, one prefill over all tokens). The rows of a
  prefill are prompt rows, which the block kernel multiplies in float32; the second figure runs
  them as decode rows (int8 activations), the path of generated tokens.
* Greedy agreement over 8 prompts x 64 new tokens: the fraction of positions with the same token
  as fp32, and the mean length of the identical prefix (greedy decoding diverges for good once
  one token differs, so the position-wise rate understates closeness).

Run: .venv/bin/python bench/model/int8_quality.py   -> bench/model/int8_quality.{json,md}
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from inference_app.engine import EngineSettings, SamplingParams
from inference_app.engine.engine import JaxEngine, model_for
from inference_app.kernels import build
from inference_app.model.catalog import embedded_model_path
from inference_app.model.transformer import prefill

HERE = Path(__file__).resolve().parent
WORK = HERE.parents[1] / ".work"
LLAMACPP_PY = WORK / "llamacpp" / "bin" / "python"
NEW_TOKENS = 64
TEXT = (
    "The river town woke slowly. Fishermen pulled their boats onto the gravel, and the baker, who "
    "had been awake since four, set the first loaves on the window sill to cool. Children ran past "
    "the church on their way to school, arguing about a football match from the evening before. "
    "In the square, the mayor read a notice about the new bridge: construction would begin in the "
    "spring, cost about two million euros, and take eighteen months. Some people welcomed the news, "
    "because the old ferry was slow and often cancelled in winter storms. Others worried that "
    "lorries would soon thunder through the narrow streets. By noon the market was full. Farmers "
    "sold cheese, apples and honey; a woman from the next valley offered wool dyed with onion skins "
    "and walnut shells. In the afternoon it rained, and the town grew quiet again, as it always did."
)
PROMPTS = [
    "The capital of France is",
    "Here is a short poem about autumn:\n",
    "def quicksort(arr):\n",
    "The three primary colours are",
    "<|im_start|>user\nGive me two tips for learning a language.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWhat is photosynthesis?<|im_end|>\n<|im_start|>assistant\n",
    "In the year 1492,",
    "A good breakfast should include",
]
BASE = EngineSettings(max_slots=1, max_prefill_length=256, max_target_length=320, weight_dtype="float32")


def perplexity(engine: JaxEngine, ids: list[int], as_decode_rows: bool = False) -> float:
    tokens = np.asarray([ids], np.int32)
    fwd = jax.jit(prefill, static_argnums=1, static_argnames=("all_logits", "kernels", "as_decode_rows"))
    lengths = np.asarray([len(ids)], np.int32)
    # the engine's own kernels: block weights go through the kernel as served
    logits, _ = fwd(
        engine.prefill_params,
        engine.config,
        tokens,
        lengths,
        all_logits=True,
        kernels=engine.policy.kernels,
        as_decode_rows=as_decode_rows,
    )
    logp = np.asarray(jax.nn.log_softmax(logits[0], axis=-1))
    nll = -logp[np.arange(len(ids) - 1), ids[1:]]
    return float(np.exp(nll.mean()))


def greedy(engine: JaxEngine, ids: list[int]) -> list[int]:
    prefix = engine.prefill(ids, SamplingParams())
    engine.insert(engine.transfer(prefix), 0)
    out = [prefix.first_token] + [int(np.asarray(engine.generate().tokens)[0]) for _ in range(NEW_TOKENS - 1)]
    engine.release(0)
    return out


def llama_cpp(text_ids: list[int], prompt_ids: list[list[int]]) -> dict[str, Any] | None:
    """llama.cpp's perplexity and greedy tokens on the same ids (None when it is not built)."""
    if not LLAMACPP_PY.exists():
        return None
    job = {"model": str(embedded_model_path("smollm2-135m")), "text": text_ids, "prompts": prompt_ids}
    out = subprocess.run(
        [str(LLAMACPP_PY), str(HERE / "llamacpp_reference.py")],
        input=json.dumps({**job, "new_tokens": NEW_TOKENS}),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LLAMA_CPP_LIB_PATH": str(WORK / "llama.cpp-build" / "bin")},
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def compare(ref: list[list[int]], got: list[list[int]]) -> dict[str, float]:
    same = sum(a == b for r, g in zip(ref, got, strict=True) for a, b in zip(r, g, strict=True))
    prefixes = []
    for r, g in zip(ref, got, strict=True):
        n = 0
        while n < len(r) and r[n] == g[n]:
            n += 1
        prefixes.append(n)
    return {
        "position_agreement": round(same / sum(len(r) for r in ref), 3),
        "mean_identical_prefix": round(float(np.mean(prefixes)), 1),
        "fully_identical_sequences": sum(p == NEW_TOKENS for p in prefixes),
    }


def main() -> int:
    variants = {
        "fp32": BASE,
        "int8_weights": dataclasses.replace(BASE, weight_dtype="int8"),
        "gguf_weights": dataclasses.replace(BASE, weight_dtype="gguf"),
        "int8_kv": dataclasses.replace(BASE, kv_dtype="int8"),
        "bf16_weights": dataclasses.replace(BASE, weight_dtype="bfloat16"),  # activations bf16 too
    }
    models = {s.weight_dtype: model_for(s) for s in variants.values()}
    fp32_model = models[BASE.weight_dtype]
    text_ids = fp32_model.tokenizer.encode(TEXT)
    prompt_ids = [fp32_model.tokenizer.encode(p) for p in PROMPTS]
    rows: dict[str, Any] = {}
    seqs: dict[str, list[list[int]]] = {}
    for name, settings in variants.items():
        engine = JaxEngine(settings, models[settings.weight_dtype])
        seqs[name] = [greedy(engine, p) for p in prompt_ids]
        rows[name] = {
            "perplexity": round(perplexity(engine, text_ids), 4),
            "perplexity_as_decode_rows": round(perplexity(engine, text_ids, as_decode_rows=True), 4),
        }
    peer = llama_cpp(text_ids, prompt_ids)
    if peer is not None:
        rows["llama.cpp"] = {"perplexity": round(peer["perplexity"], 4), "version": peer["llama_cpp"]}
        seqs["llama.cpp"] = peer["greedy"]
    others = [name for name in rows if name != "fp32"]
    for name in others:
        rows[name].update(compare(seqs["fp32"], seqs[name]))
        rows[name]["perplexity_delta"] = round(rows[name]["perplexity"] - rows["fp32"]["perplexity"], 4)
    if peer is not None:  # the same blocks, read by our kernels and by llama.cpp's
        rows["gguf_weights"]["vs_llama_cpp"] = compare(seqs["llama.cpp"], seqs["gguf_weights"])
        rows["fp32"]["vs_llama_cpp"] = compare(seqs["llama.cpp"], seqs["fp32"])
    result = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "kernel_level": build.levels()[0].name if build.available() else None,
        "prompt_rows": "bfloat16" if build.prompt_rows_bf16() else "float32",
        "text_tokens": len(text_ids),
        "prompts": len(PROMPTS),
        "new_tokens": NEW_TOKENS,
        "note": "int8_kv perplexity is fp32 (the teacher-forced prefill never reads the cache)",
        "results": rows,
    }
    (HERE / "int8_quality.json").write_text(json.dumps(result, indent=1) + "\n")
    md = [
        "# Weight formats vs fp32: GGUF blocks (the CPU default), int8, bf16; int8 KV "
        f"({result['date_utc']} UTC)",
        "",
        f"SmolLM2-135M; perplexity on a fixed {len(text_ids)}-token text; greedy agreement over "
        f"{len(PROMPTS)} prompts x {NEW_TOKENS} new tokens.",
        "",
        "| variant | perplexity | as decode rows | delta vs fp32 | position agreement "
        "| mean identical prefix | identical sequences |",
        "|---|---|---|---|---|---|---|",
        f"| fp32 | {rows['fp32']['perplexity']} | {rows['fp32']['perplexity_as_decode_rows']} | 0 | 1.0 | "
        f"{NEW_TOKENS} | {len(PROMPTS)} |",
    ]
    for name in others:
        r = rows[name]
        md.append(
            f"| {name} | {r['perplexity']} | {r.get('perplexity_as_decode_rows', '')} | "
            f"{r['perplexity_delta']} | {r['position_agreement']} | "
            f"{r['mean_identical_prefix']} | {r['fully_identical_sequences']} |"
        )
    md += [
        "",
        "int8_kv perplexity equals fp32 by construction: the teacher-forced prefill never reads the cache.",
        "'as decode rows': the same prefill with every row computed as the engine computes generated "
        "tokens (the block kernel rounds their activations to int8); prompt rows run on the dequantized "
        f"blocks in {result['prompt_rows']} (kernel level {result['kernel_level']}).",
    ]
    if peer is not None:
        md += [
            "",
            f"Against llama.cpp (llama-cpp-python {peer['llama_cpp']}, its defaults: f16 KV cache) "
            "on the same prompt ids:",
            "",
            "| variant | position agreement | mean identical prefix | identical sequences |",
            "|---|---|---|---|",
        ]
        for name in ("gguf_weights", "fp32"):
            r = rows[name]["vs_llama_cpp"]
            md.append(
                f"| {name} | {r['position_agreement']} | {r['mean_identical_prefix']} | "
                f"{r['fully_identical_sequences']} |"
            )
    (HERE / "int8_quality.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
