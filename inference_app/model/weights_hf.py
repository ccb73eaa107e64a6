"""Hugging Face checkpoints for `loader.py`: config.json + *.safetensors (+ tokenizer.json).

Files are read through fsspec (gcsfs for gs://), so the same code loads a local directory and a
bucket prefix. Only the safetensors headers are read up front; tensors are then read by row
range (`read_rows`), so a loader can fetch just the rows one device needs and hold a few
tensors, never a whole file. Local files are read with `os.pread` straight into the array;
remote ones as parallel ranged GETs (`fs.cat_ranges`, concurrent in gcsfs).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import cached_property
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


# Remote reads are split into ranges of this size and fetched concurrently.
REMOTE_CHUNK_BYTES = 16 * 2**20


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes are: file, absolute byte offset, dtype, shape (row-major)."""

    file: str
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize


def parse_header(head: bytes, file: str) -> dict[str, TensorEntry]:
    """Entries of one safetensors file from its first bytes (u64 header size, JSON header)."""
    size = int.from_bytes(head[:8], "little")
    header = json.loads(head[8 : 8 + size])
    base = 8 + size
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"safetensors dtype {info['dtype']} of {name} is not supported")
        start, end = info["data_offsets"]
        entry = TensorEntry(file, base + start, np.dtype(_DTYPES[info["dtype"]]), tuple(info["shape"]))
        if math.prod(entry.shape) * entry.dtype.itemsize != end - start:
            raise ValueError(f"{file}: {name} has {end - start} bytes, not what shape {entry.shape} needs")
        out[name] = entry
    return out


def parse_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """Tensors of one safetensors file held in memory (views into `data`)."""
    out = {}
    for name, e in parse_header(data, "<memory>").items():
        count = math.prod(e.shape)
        out[name] = np.frombuffer(data, dtype=e.dtype, count=count, offset=e.offset).reshape(e.shape)
    return out


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


@dataclass
class HFCheckpoint:
    """A Hugging Face model directory (local path or any fsspec URL such as gs://bucket/dir)."""

    path: str
    _files: dict[str, int] = field(default_factory=dict, repr=False)  # local fds

    def __post_init__(self) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(self.path)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.local = "file" in protocols
        if not self.fs.exists(_join(self.root, "config.json")):
            raise FileNotFoundError(f"{self.path}: no config.json (expected a Hugging Face model directory)")
        self.hf_config: dict[str, Any] = json.loads(self._read("config.json"))
        self.config = ModelConfig.from_hf(self.hf_config)

    def _read(self, name: str) -> bytes:
        with self.fs.open(_join(self.root, name), "rb") as f:
            return bytes(f.read())

    def _exists(self, name: str) -> bool:
        return bool(self.fs.exists(_join(self.root, name)))

    @cached_property
    def entries(self) -> dict[str, TensorEntry]:
        """Every tensor's location, from the headers alone (a few KB per file)."""
        files = sorted(self.fs.glob(_join(self.root, "*.safetensors")))
        if not files:
            raise FileNotFoundError(f"{self.path}: no *.safetensors files")
        out: dict[str, TensorEntry] = {}
        for f in files:
            size = int.from_bytes(self._range(f, 0, 8), "little")
            out.update(parse_header(self._range(f, 0, 8 + size), f))
        return out

    def _range(self, file: str, start: int, end: int) -> bytes:
        with self.fs.open(file, "rb") as fh:
            fh.seek(start)
            return bytes(fh.read(end - start))

    def _fd(self, file: str) -> int:
        if file not in self._files:
            self._files[file] = os.open(file, os.O_RDONLY)
        return self._files[file]

    def _read_into(self, file: str, start: int, out: np.ndarray) -> None:
        """Fill `out` with the bytes at [start, start + out.nbytes) of `file`."""
        buf = memoryview(out.reshape(-1).view(np.uint8).data)
        if self.local:
            fd, done = self._fd(file), 0
            while done < len(buf):
                n = os.preadv(fd, [buf[done:]], start + done)
                if n <= 0:
                    raise OSError(f"{file}: unexpected end of file at byte {start + done}")
                done += n
            return
        bounds = [*range(start, start + len(buf), REMOTE_CHUNK_BYTES), start + len(buf)]
        parts = self.fs.cat_ranges([file] * (len(bounds) - 1), bounds[:-1], bounds[1:])
        pos = 0
        for part in parts:
            if isinstance(part, Exception):
                raise part
            buf[pos : pos + len(part)] = part
            pos += len(part)

    def entry(self, hf_name: str) -> TensorEntry:
        try:
            return self.entries[hf_name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor {hf_name} in the safetensors files") from None

    def read_rows(self, hf_name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a tensor (along its first dim), in the stored dtype."""
        e = self.entry(hf_name)
        out = np.empty((stop - start, *e.shape[1:]), e.dtype)
        if out.size:
            self._read_into(e.file, e.offset + start * e.row_bytes, out)
        return out

    def tensor(self, hf_name: str) -> np.ndarray:
        """The stored tensor in its stored dtype (no fp32 copy of a bf16 checkpoint; the
        conversion to the serving dtype happens once, in `weights.py`)."""
        e = self.entry(hf_name)
        return self.read_rows(hf_name, 0, e.shape[0]) if e.shape else self.read_rows(hf_name, 0, 1)[0]

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()

    def tokenizer(self) -> TextTokenizer:
        return tokenizer_from_dir(self.path, self.hf_config.get("eos_token_id"))


def tokenizer_from_dir(path: str, eos: Any = None) -> TextTokenizer:
    """The tokenizer of a Hugging Face directory (`tokenizer.json`, optional `tokenizer_config.json`,
    `chat_template.jinja`, `generation_config.json`), local or any fsspec URL. `eos` is the
    config.json's `eos_token_id`, which generation_config.json overrides."""
    fs, root = fsspec.core.url_to_fs(path)
    if root.endswith("tokenizer.json"):
        root = root.rsplit("/", 1)[0]

    def read(name: str) -> bytes:
        with fs.open(_join(root, name), "rb") as f:
            return bytes(f.read())

    def exists(name: str) -> bool:
        return bool(fs.exists(_join(root, name)))

    if not exists("tokenizer.json"):
        raise FileNotFoundError(f"{path}: no tokenizer.json")
    tok_cfg = json.loads(read("tokenizer_config.json")) if exists("tokenizer_config.json") else None
    if tok_cfg is not None and tok_cfg.get("chat_template") is None and exists("chat_template.jinja"):
        tok_cfg["chat_template"] = read("chat_template.jinja").decode()
    if exists("generation_config.json"):
        eos = json.loads(read("generation_config.json")).get("eos_token_id", eos)
    eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    return from_hf_files(read("tokenizer.json").decode(), tok_cfg, eos_ids)
