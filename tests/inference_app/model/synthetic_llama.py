"""Write a randomly initialised Llama of a chosen size in the real Hugging Face layout (test and
benchmark helper): config.json, sharded `model-0000i-of-0000n.safetensors` with their index, and
a tokenizer. Written one shard at a time, so a multi-GB checkpoint never sits in memory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

# ~2.15 GB of fp32 (9 layers of a 2048-wide GQA model + 32000-token embedding and head).
BIG: dict[str, Any] = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=9,
    num_attention_heads=16,
    num_key_value_heads=4,
    head_dim=128,
    vocab_size=32000,
)
# ~0.32 GB: the same shape of model, small enough for every `make test`.
SMALL: dict[str, Any] = dict(
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=128,
    vocab_size=16000,
)


def _tensors(cfg: dict[str, Any], layer: int) -> dict[str, tuple[int, ...]]:
    d, f, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    h, k = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    p = f"model.layers.{layer}."
    return {
        p + "input_layernorm.weight": (d,),
        p + "self_attn.q_proj.weight": (h * hd, d),
        p + "self_attn.k_proj.weight": (k * hd, d),
        p + "self_attn.v_proj.weight": (k * hd, d),
        p + "self_attn.o_proj.weight": (d, h * hd),
        p + "post_attention_layernorm.weight": (d,),
        p + "mlp.gate_proj.weight": (f, d),
        p + "mlp.up_proj.weight": (f, d),
        p + "mlp.down_proj.weight": (d, f),
    }


def write_synthetic_llama(directory: Path, sizes: dict[str, Any], tokenizer_from: Path, seed: int = 0) -> int:
    """Write the checkpoint; returns the bytes of tensor data written."""
    cfg = dict(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        torch_dtype="float32",
        bos_token_id=1,
        eos_token_id=2,
        **sizes,
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_from / name, directory / name)
    rng = np.random.default_rng(seed)
    v, d = cfg["vocab_size"], cfg["hidden_size"]
    shards: list[dict[str, tuple[int, ...]]] = [{"model.embed_tokens.weight": (v, d)}]
    shards += [_tensors(cfg, i) for i in range(cfg["num_hidden_layers"])]
    shards.append({"model.norm.weight": (d,), "lm_head.weight": (v, d)})
    index: dict[str, str] = {}
    total = 0
    for n, shapes in enumerate(shards, 1):
        fname = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        arrays = {}
        for name, shape in shapes.items():
            if len(shape) == 1:
                arrays[name] = (1.0 + 0.1 * rng.standard_normal(shape, np.float32)).astype(np.float32)
            else:
                arrays[name] = rng.standard_normal(shape, np.float32) * np.float32(
                    0.02 if "embed" not in name else 1.0
                )
            total += arrays[name].nbytes
            index[name] = fname
        save_file(arrays, str(directory / fname), metadata={"format": "pt"})
        del arrays
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": index})
    )
    return total
