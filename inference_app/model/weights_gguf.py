"""GGUF (llama.cpp) checkpoints for `loader.py`: metadata -> ModelConfig, tensors -> HF layout.

llama.cpp's converter permutes the rows of Q and K so that each head's rotary pairs are
adjacent (interleaved RoPE, GPT-J style). Our model uses the Hugging Face "rotate halves"
layout, so `unpermute_qk` puts the rows back; tests prove it against transformers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.quants import dequantize

from inference_app.model import quant
from inference_app.model.config import ModelConfig
from inference_app.model.tokenizer import TextTokenizer, from_gguf_fields

_FLOAT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)

# GGUF tensor name -> Hugging Face name ({i} = layer index).
_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's `permute`: per head, rows (pair j, half h) -> (half h, pair j)."""
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's permutation (HF rows -> GGUF rows); the inverse of `unpermute_qk`."""
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class PlainArrayReader(GGUFReader):
    """gguf's reader over a plain-ndarray view of its memory map (the same pages, no copy).

    The reader slices its buffer once per vocabulary string and merge (about 250k slices for the
    embedded model's 49k tokens); on an `np.memmap` each slice pays memmap's Python-level
    `__getitem__` and `__array_finalize__`, about two thirds of the parse (4.9 s -> 1.5 s here).
    Fields and tensors are identical, tensors being plain ndarrays over the map."""

    @property  # type: ignore[override]
    def data(self) -> np.ndarray:
        return self._plain

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self._plain = value.view(np.ndarray)  # keeps the map alive through `.base`


def open_gguf(path: str) -> GGUFCheckpoint:
    """The parsed checkpoint at `path`, shared within the process while the file is unchanged:
    parsing the embedded model's 49k-token vocabulary takes seconds even with `PlainArrayReader`,
    and one process may open the file several times (the engine, a tokenizer, the test suite)."""
    st = os.stat(path)
    return _open_gguf(os.path.realpath(path), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=4)
def _open_gguf(path: str, mtime_ns: int, size: int) -> GGUFCheckpoint:
    return GGUFCheckpoint(path)


@dataclass
class GGUFCheckpoint:
    """A parsed GGUF file: typed metadata, dequantized HF-named tensors, tokenizer fields."""

    path: str

    @cached_property
    def reader(self) -> GGUFReader:
        return PlainArrayReader(self.path)

    def field(self, key: str, default: Any = None) -> Any:
        f = self.reader.fields.get(key)
        if f is None:
            return default
        if f.types and f.types[0] == GGUFValueType.ARRAY:
            return [f.contents(i) for i in range(len(f.data))]
        return f.contents()

    @cached_property
    def arch(self) -> str:
        arch = str(self.field("general.architecture"))
        if arch != "llama":
            raise ValueError(f"{self.path}: GGUF architecture {arch!r} is not supported (only 'llama')")
        return arch

    @cached_property
    def config(self) -> ModelConfig:
        a = self.arch
        heads = int(self.field(f"{a}.attention.head_count"))
        hidden = int(self.field(f"{a}.embedding_length"))
        names = {t.name for t in self.reader.tensors}
        tokens = self.field("tokenizer.ggml.tokens")
        vocab = int(self.field(f"{a}.vocab_size", len(tokens) if tokens else 0))
        scaling = None
        if self.field(f"{a}.rope.scaling.type") == "llama3":  # rarely written; factors live in rope_freqs
            raise ValueError(f"{self.path}: GGUF llama3 rope scaling is not supported; use the HF checkpoint")
        return ModelConfig(
            num_layers=int(self.field(f"{a}.block_count")),
            num_heads=heads,
            num_kv_heads=int(self.field(f"{a}.attention.head_count_kv", heads)),
            head_dim=int(self.field(f"{a}.rope.dimension_count", hidden // heads)),
            hidden_size=hidden,
            ffn_size=int(self.field(f"{a}.feed_forward_length")),
            vocab_size=vocab,
            rope_theta=float(self.field(f"{a}.rope.freq_base", 10000.0)),
            rope_scaling=scaling,
            rms_eps=float(self.field(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)),
            tie_embeddings="output.weight" not in names,
            max_position_embeddings=int(self.field(f"{a}.context_length", 8192)),
        )

    @cached_property
    def _hf_to_tensor(self) -> dict[str, Any]:
        out = {}
        for t in self.reader.tensors:
            name = t.name
            parts = name.split(".")
            if parts[0] == "blk":
                key = "blk.{i}." + ".".join(parts[2:])
                hf = _NAMES.get(key)
                hf = hf.format(i=parts[1]) if hf else None
            else:
                hf = _NAMES.get(name)
            if hf is not None:
                out[hf] = t
        return out

    def tensor(self, hf_name: str) -> np.ndarray:
        """A dequantized fp32 tensor by its Hugging Face name, in HF row order."""
        try:
            t = self._hf_to_tensor[hf_name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor for {hf_name}") from None
        # np.asarray: a plain view of the memmap (each slice of an np.memmap runs a Python hook)
        w = np.asarray(dequantize(np.asarray(t.data), t.tensor_type), dtype=np.float32)
        w = w.reshape([int(n) for n in reversed(t.shape)])  # GGUF shapes are (cols, rows)
        cfg = self.config
        if hf_name.endswith("q_proj.weight"):
            w = unpermute_qk(w, cfg.num_heads)
        elif hf_name.endswith("k_proj.weight"):
            w = unpermute_qk(w, cfg.num_kv_heads)
        return w

    def blocks(self, hf_name: str) -> quant.BlockQuant | None:
        """A matrix by its Hugging Face name in a block format we read, rows in HF order [out, in]:
        Q4_0/Q4_1/Q8_0 as stored (not dequantized); llama.cpp's other quantized types (K-quants,
        ...) as Q8_0 of their dequantized values; None for a float tensor."""
        try:
            t = self._hf_to_tensor[hf_name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor for {hf_name}") from None
        fmt = quant.format_of(t.tensor_type)
        if fmt is None:
            if t.tensor_type in _FLOAT_TYPES:
                return None
            return quant.quantize(self.tensor(hf_name).T, "q8_0")
        cols, rows = (int(n) for n in t.shape)  # GGUF shapes are (cols, rows)
        w = quant.from_gguf_rows(np.asarray(t.data), fmt, (cols,), (rows,))
        cfg = self.config
        heads = {"q_proj.weight": cfg.num_heads, "k_proj.weight": cfg.num_kv_heads}
        for suffix, n in heads.items():
            if hf_name.endswith(suffix):  # the same row permutation as `tensor`, on whole rows
                order = unpermute_qk(np.arange(rows), n)
                w = quant.take_rows(w, order, (rows,))
        return w


def gguf_tokenizer(ckpt: GGUFCheckpoint) -> TextTokenizer:
    """The GGUF's own tokenizer (byte-level BPE from its vocabulary and merges)."""
    model = ckpt.field("tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"{ckpt.path}: GGUF tokenizer model {model!r} is not supported (only 'gpt2' BPE)")
    eos = int(ckpt.field("tokenizer.ggml.eos_token_id"))
    eot = ckpt.field("tokenizer.ggml.eot_token_id")
    bos = ckpt.field("tokenizer.ggml.bos_token_id")
    return from_gguf_fields(
        tokens=ckpt.field("tokenizer.ggml.tokens"),
        token_types=ckpt.field("tokenizer.ggml.token_type"),
        merges=ckpt.field("tokenizer.ggml.merges"),
        pre=str(ckpt.field("tokenizer.ggml.pre", "default")),
        eos_id=eos,
        bos_id=None if bos is None else int(bos),
        chat_template=ckpt.field("tokenizer.chat_template"),
        extra_eos=() if eot is None else (int(eot),),
    )
