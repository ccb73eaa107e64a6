"""Hugging Face checkpoints for `loader.py`: config.json + *.safetensors (+ tokenizer.json).

Files are read through fsspec (gcsfs for gs://), so the same code loads a local directory and a
bucket prefix. Safetensors are read whole into memory, then served by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import fsspec
import jax.numpy as jnp
import numpy as np

from inference_app.model.config import ModelConfig
from inference_app.model.tokenizer import TextTokenizer, from_hf_files

# safetensors dtype codes -> numpy (bf16 through JAX's ml_dtypes type, which safetensors.numpy lacks).
_DTYPES: dict[str, Any] = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": jnp.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def parse_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """Tensors of one safetensors file: u64 header size, JSON header, then raw little-endian data."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    base = 8 + size
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"safetensors dtype {info['dtype']} of {name} is not supported")
        start, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]])
        arr = np.frombuffer(data, dtype=dtype, count=(end - start) // dtype.itemsize, offset=base + start)
        out[name] = arr.reshape(info["shape"])
    return out


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


@dataclass
class HFCheckpoint:
    """A Hugging Face model directory (local path or any fsspec URL such as gs://bucket/dir)."""

    path: str
    _tensors: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(self.path)
        if not self.fs.exists(_join(self.root, "config.json")):
            raise FileNotFoundError(f"{self.path}: no config.json (expected a Hugging Face model directory)")
        self.hf_config: dict[str, Any] = json.loads(self._read("config.json"))
        self.config = ModelConfig.from_hf(self.hf_config)

    def _read(self, name: str) -> bytes:
        with self.fs.open(_join(self.root, name), "rb") as f:
            return bytes(f.read())

    def _exists(self, name: str) -> bool:
        return bool(self.fs.exists(_join(self.root, name)))

    def _load_tensors(self) -> None:
        files = sorted(self.fs.glob(_join(self.root, "*.safetensors")))
        if not files:
            raise FileNotFoundError(f"{self.path}: no *.safetensors files")
        for f in files:
            with self.fs.open(f, "rb") as fh:
                self._tensors.update(parse_safetensors(fh.read()))

    def tensor(self, hf_name: str) -> np.ndarray:
        """The stored tensor in its stored dtype (no fp32 copy of a bf16 checkpoint; the
        conversion to the serving dtype happens once, in `params_from_hf`)."""
        if not self._tensors:
            self._load_tensors()
        try:
            t = self._tensors[hf_name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor {hf_name} in the safetensors files") from None
        return t

    def tokenizer(self) -> TextTokenizer:
        if not self._exists("tokenizer.json"):
            raise FileNotFoundError(f"{self.path}: no tokenizer.json")
        tok_cfg = (
            json.loads(self._read("tokenizer_config.json")) if self._exists("tokenizer_config.json") else None
        )
        if (
            tok_cfg is not None
            and tok_cfg.get("chat_template") is None
            and self._exists("chat_template.jinja")
        ):
            tok_cfg["chat_template"] = self._read("chat_template.jinja").decode()
        eos = self.hf_config.get("eos_token_id")
        if self._exists("generation_config.json"):
            eos = json.loads(self._read("generation_config.json")).get("eos_token_id", eos)
        eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        return from_hf_files(self._read("tokenizer.json").decode(), tok_cfg, eos_ids)
