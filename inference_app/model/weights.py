"""Checkpoint tensors (Hugging Face names and layouts) -> our parameter pytree.

Both loaders funnel through `params_from_hf`: the GGUF loader first renames tensors and undoes
llama.cpp's Q/K row permutation, so there is exactly one place that knows our layout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from inference_app.model.config import ModelConfig
from inference_app.model.transformer import Params, quantize_int8

# How many leading dims each matrix contracts over (for per-output-channel int8 scales).
IN_DIMS = {"wqkv": 1, "wo": 3, "w_gate_up": 1, "w_down": 1, "lm_head": 1}

TensorGetter = Callable[[str], np.ndarray]


def params_from_hf(
    cfg: ModelConfig, get: TensorGetter, dtype: Any = np.float32, int8: bool = False
) -> Params:
    """Build host (numpy) params from HF-named tensors; `int8` quantizes matrices + embeddings."""
    k, g, hd, d = cfg.num_kv_heads, cfg.group_size, cfg.head_dim, cfg.hidden_size

    def mat(name: str, w: np.ndarray) -> Any:
        return quantize_int8(w, IN_DIMS[name]) if int8 else np.asarray(w, dtype)

    layers = []
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        wq = get(p + "self_attn.q_proj.weight").reshape(k, g, hd, d)
        wk = get(p + "self_attn.k_proj.weight").reshape(k, 1, hd, d)
        wv = get(p + "self_attn.v_proj.weight").reshape(k, 1, hd, d)
        wqkv = np.concatenate([wq, wk, wv], axis=1).transpose(3, 0, 1, 2)  # [D, K, G+2, Dh]
        wo = get(p + "self_attn.o_proj.weight").reshape(d, k, g, hd).transpose(1, 2, 3, 0)
        gate_up = np.stack([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")])
        layers.append(
            {
                "attn_norm": np.asarray(get(p + "input_layernorm.weight"), dtype),
                "wqkv": mat("wqkv", wqkv),
                "wo": mat("wo", wo),
                "mlp_norm": np.asarray(get(p + "post_attention_layernorm.weight"), dtype),
                "w_gate_up": mat("w_gate_up", gate_up.transpose(2, 0, 1)),  # [D, 2, F]
                "w_down": mat("w_down", get(p + "mlp.down_proj.weight").T),  # [F, D]
            }
        )
    emb = get("model.embed_tokens.weight")
    params: Params = {
        # Rows of the table are output channels of the tied LM head: quantize per row, so
        # QInt8.q [V, D] is also the lookup table.
        "embed": quantize_int8(emb.T, 1) if int8 else np.asarray(emb, dtype),
        "final_norm": np.asarray(get("model.norm.weight"), dtype),
        "layers": layers,
    }
    if not cfg.tie_embeddings:
        params["lm_head"] = mat("lm_head", get("lm_head.weight").T)  # [D, V]
    elif not int8:  # tied: a transposed copy, see transformer.py
        params["lm_head"] = np.ascontiguousarray(params["embed"].T)
    return params
