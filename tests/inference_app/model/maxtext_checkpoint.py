"""Write a Hugging Face Llama as MaxText would store it (test helper for test_maxtext.py).

The math follows MaxText's converters (AI-Hypercomputer/maxtext at
e591f30cbbf217ed67ef71263ec0538239f9c3b8, `checkpoint_conversion/standalone_scripts/
llama_or_mistral_ckpt.py`, HF path, and `llama_ckpt_conversion_inference_only.py`, unscanned):
kernels are the HF matrices transposed to [in, out], heads split out, the query divided by
sqrt(head_dim), and for llama3.1 names Q/K put back into adjacent rotary pairs
(`max_utils.permute_to_match_maxtext_rope`). The tree is saved with Orbax as MaxText's
`checkpointing.save_params_to_path` does: `{"params": {"params": tree}}`, or for an int8
checkpoint `{"params": {"aqt": aqt_tree, "params": tree_without_kernels}}` where each kernel's
AQT `Freezer` holds `qrhs/value` (int8, kernel shape) and `qrhs/scale` (output order, with a
leading 1 per non-contracted activation dim). AQT int8 numerics (google/aqt at 9d1667eb,
`numerics/int_numerics.py`, `calibration.py`): scale = absmax / 127.5 over the contracted dims,
values clipped to +-127 and rounded half to even. Scales are stored in bfloat16, the activation
dtype MaxText casts kernels to before the quantized dot.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from inference_app.model.weights_hf import HFCheckpoint

# kernel -> (contracted dims of the kernel, activation dims not contracted)
_AQT_DIMS = {
    "query": ((0,), 2),
    "key": ((0,), 2),
    "value": ((0,), 2),
    "out": ((0, 1), 2),
    "wi_0": ((0,), 2),
    "wi_1": ((0,), 2),
    "wo": ((0,), 2),
}


def to_interleaved(x: np.ndarray) -> np.ndarray:
    """Rotate-halves -> adjacent pairs on the last axis (MaxText's permute_to_match_maxtext_rope)."""
    first, second = np.split(x, 2, axis=-1)
    out = np.empty_like(x)
    out[..., ::2], out[..., 1::2] = first, second
    return out


def from_interleaved(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x[..., ::2], x[..., 1::2]], axis=-1)


def maxtext_tree(hf_dir: Path, interleaved: bool) -> dict[str, Any]:
    """The unscanned MaxText parameter tree (float32) of a HF Llama directory."""
    ck = HFCheckpoint(str(hf_dir))
    cfg = ck.config
    h, k, hd, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size

    def t(name: str) -> np.ndarray:
        return np.asarray(ck.tensor(name), np.float32)

    def rope(x: np.ndarray) -> np.ndarray:
        return to_interleaved(x) if interleaved else x

    decoder: dict[str, Any] = {
        "decoder_norm": {"scale": t("model.norm.weight")},
        "logits_dense": {"kernel": t("lm_head.weight").T.copy()},
    }
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        wq = rope(t(p + "self_attn.q_proj.weight").T.reshape(d, h, hd)) / np.float32(math.sqrt(hd))
        wk = rope(t(p + "self_attn.k_proj.weight").T.reshape(d, k, hd))
        wv = t(p + "self_attn.v_proj.weight").T.reshape(d, k, hd)
        wo = t(p + "self_attn.o_proj.weight").reshape(d, h, hd).transpose(1, 2, 0)
        decoder[f"layers_{i}"] = {
            "self_attention": {
                "query": {"kernel": wq},
                "key": {"kernel": wk},
                "value": {"kernel": wv},
                "out": {"kernel": np.ascontiguousarray(wo)},
            },
            "mlp": {
                "wi_0": {"kernel": t(p + "mlp.gate_proj.weight").T.copy()},
                "wi_1": {"kernel": t(p + "mlp.up_proj.weight").T.copy()},
                "wo": {"kernel": t(p + "mlp.down_proj.weight").T.copy()},
            },
            "pre_self_attention_layer_norm": {"scale": t(p + "input_layernorm.weight")},
            "post_self_attention_layer_norm": {"scale": t(p + "post_attention_layernorm.weight")},
        }
    return {"decoder": decoder, "token_embedder": {"embedding": t("model.embed_tokens.weight")}}


def aqt_int8(w: np.ndarray, contracted: tuple[int, ...], lead: int) -> tuple[np.ndarray, np.ndarray]:
    """(qvalue int8 [w.shape], scale_t [1] * lead + out dims) as AQT's int8 Freezer stores them."""
    amax = np.max(np.abs(w), axis=contracted, keepdims=True)
    amax = np.where(amax == 0, 1.0, amax)
    scale = (amax / 127.5).astype(ml_dtypes.bfloat16).astype(np.float32)
    q = np.round(np.clip(w / scale, -127.0, 127.0)).astype(np.int8)  # np.round: half to even
    out_dims = [n for j, n in enumerate(w.shape) if j not in contracted]
    return q, scale.reshape([1] * lead + out_dims).astype(ml_dtypes.bfloat16)


def quantize_tree(tree: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(aqt collection, params with quantized kernels replaced by {}), as MaxText's convert pass
    (`maxengine.quantize_params` + `quantizations.remove_quantized_params`) leaves them."""
    aqt: dict[str, Any] = {"decoder": {}}
    params = _copy_arrays(tree)
    for layer, body in tree["decoder"].items():
        if not layer.startswith("layers_"):
            continue
        aqt["decoder"][layer] = {}
        for group in ("self_attention", "mlp"):
            aqt["decoder"][layer][group] = {}
            for name, leaf in body[group].items():
                contracted, lead = _AQT_DIMS[name]
                q, scale = aqt_int8(leaf["kernel"], contracted, lead)
                aqt["decoder"][layer][group][name] = {
                    "AqtDotGeneral_0": {"qrhs": {"value": q, "scale": scale}}
                }
                params["decoder"][layer][group][name]["kernel"] = {}
    return aqt, params


def _copy_arrays(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _copy_arrays(v) for k, v in tree.items()}
    return tree


def dequantized_tree(aqt: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The float weights an int8 checkpoint stands for (qvalue * scale), in MaxText's layout."""
    out = _copy_arrays(params)
    for layer, groups in aqt["decoder"].items():
        for group, mods in groups.items():
            for name, node in mods.items():
                q = node["AqtDotGeneral_0"]["qrhs"]["value"].astype(np.float32)
                s = node["AqtDotGeneral_0"]["qrhs"]["scale"].astype(np.float32)
                contracted = _AQT_DIMS[name][0]
                keep = [1 if j in contracted else n for j, n in enumerate(q.shape)]
                out["decoder"][layer][group][name]["kernel"] = q * s.reshape(keep)
    return out


def write_maxtext(tree_or_pair: Any, directory: Path) -> Path:
    """Save like MaxText: Orbax PyTree checkpoint (OCDBT, MaxText's default) at `directory`."""
    import orbax.checkpoint as ocp

    if isinstance(tree_or_pair, tuple):
        aqt, params = tree_or_pair
        item = {"params": {"aqt": aqt, "params": params}}
    else:
        item = {"params": {"params": tree_or_pair}}
    ocp.PyTreeCheckpointer().save(str(directory.resolve()), item, force=True)
    return directory


def write_hf_from_maxtext(tree: dict[str, Any], template: Path, directory: Path, interleaved: bool) -> Path:
    """The inverse conversion: a MaxText float tree back to a HF directory (config/tokenizer
    copied from `template`), for "the same weights loaded from safetensors"."""
    from safetensors.numpy import save_file

    cfg = HFCheckpoint(str(template)).config
    h, k, hd, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
    dec = tree["decoder"]

    def unrope(x: np.ndarray) -> np.ndarray:
        return from_interleaved(x) if interleaved else x

    out = {
        "model.embed_tokens.weight": tree["token_embedder"]["embedding"],
        "model.norm.weight": dec["decoder_norm"]["scale"],
        "lm_head.weight": dec["logits_dense"]["kernel"].T,
    }
    for i in range(cfg.num_layers):
        p, L = f"model.layers.{i}.", dec[f"layers_{i}"]
        sa, mlp = L["self_attention"], L["mlp"]
        out[p + "self_attn.q_proj.weight"] = (
            (unrope(sa["query"]["kernel"]) * np.float32(math.sqrt(hd))).reshape(d, h * hd).T
        )
        out[p + "self_attn.k_proj.weight"] = unrope(sa["key"]["kernel"]).reshape(d, k * hd).T
        out[p + "self_attn.v_proj.weight"] = sa["value"]["kernel"].reshape(d, k * hd).T
        out[p + "self_attn.o_proj.weight"] = sa["out"]["kernel"].transpose(2, 0, 1).reshape(d, h * hd)
        out[p + "mlp.gate_proj.weight"] = mlp["wi_0"]["kernel"].T
        out[p + "mlp.up_proj.weight"] = mlp["wi_1"]["kernel"].T
        out[p + "mlp.down_proj.weight"] = mlp["wo"]["kernel"].T
        out[p + "input_layernorm.weight"] = L["pre_self_attention_layer_norm"]["scale"]
        out[p + "post_attention_layernorm.weight"] = L["post_self_attention_layer_norm"]["scale"]
    directory.mkdir(parents=True, exist_ok=True)
    save_file(
        {n: np.ascontiguousarray(v, np.float32) for n, v in out.items()}, str(directory / "model.safetensors")
    )
    for f in template.iterdir():
        if f.suffix == ".json":
            shutil.copy(f, directory / f.name)
    return directory
