"""Open any supported checkpoint: a GGUF file, a Hugging Face directory, or a MaxText (Orbax)
checkpoint, local or gs://.

The model package's entry point: the engine (`engine.model_for`) calls `load_model`, which reads
the config and tokenizer and returns the weights unplaced; the engine, which knows the mesh, calls
`weights.place(shardings)`. Hugging Face weights are streamed shard by shard onto the devices
(`streaming.py`); MaxText checkpoints are restored by Orbax straight into shardings
(`maxtext.py`); GGUF files (the small embedded model) are built on host, their block-quantized
matrices kept as stored when the matrix format asks for them. llama.cpp's block formats on a
Hugging Face checkpoint are quantized at load on host too (one-device CPU serving); MaxText
checkpoints take float or int8 only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, Protocol

import jax
import numpy as np

from inference_app.model import maxtext
from inference_app.model.config import ModelConfig
from inference_app.model.streaming import StreamedWeights
from inference_app.model.tokenizer import TextTokenizer
from inference_app.model.transformer import Params
from inference_app.model.weights import SHARDED_FORMATS, MatrixFormat, check_format, params_from_hf
from inference_app.model.weights_gguf import gguf_tokenizer, open_gguf
from inference_app.model.weights_hf import HFCheckpoint

Format = Literal["gguf", "hf", "maxtext"]


class Weights(Protocol):
    """Parameters that can place themselves on a mesh (and, for small models, on host)."""

    def abstract(self) -> Params:
        """Shapes/dtypes in our layout (ShapeDtypeStruct leaves), for building shardings."""
        ...

    def place(self, shardings: Params) -> Params:
        """The parameters as jax.Arrays with `shardings` (a tree like `abstract()`)."""
        ...

    def host(self) -> Params:
        """Whole host (numpy) arrays: the reference path for tests and small models."""
        ...


@dataclass
class HostWeights:
    """Parameters already on host (GGUF, tests): placed with one `device_put`."""

    params: Params

    def abstract(self) -> Params:
        def leaf(x: Any) -> Any:
            return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)

        return jax.tree.map(leaf, self.params)

    def place(self, shardings: Params) -> Params:
        return jax.device_put(self.params, shardings)

    def host(self) -> Params:
        return self.params


@dataclass
class LoadedModel:
    config: ModelConfig
    weights: Weights
    tokenizer: TextTokenizer
    format: Format = "hf"
    matrices: MatrixFormat = "float"  # what load_model was asked for (gguf: each as stored)

    @cached_property
    def params(self) -> Params:
        """Host (numpy) arrays of every parameter (reads the whole checkpoint into memory)."""
        return self.weights.host()


def checkpoint_format(path: str) -> Format:
    """Which loader a path needs: `.gguf` file, Orbax (MaxText) directory, or HF directory."""
    if path.endswith(".gguf"):
        return "gguf"
    if maxtext.is_orbax_checkpoint(path):
        return "maxtext"
    return "hf"


def load_model(
    path: str,
    dtype: Any,
    matrices: MatrixFormat = "float",
    *,
    model_name: str | None = None,
    tokenizer_path: str | None = None,
) -> LoadedModel:
    """Open `path` for weights as `dtype`, matrices in `matrices` format, and its tokenizer.

    A GGUF file's block-quantized matrices are kept as stored when `matrices` names their format
    (or is `gguf`); anything else is converted at load. `gguf` needs a GGUF file, and MaxText
    checkpoints take `float` or `int8` (ValueError otherwise).

    A MaxText checkpoint carries no model config and no tokenizer: `model_name` picks the
    config from the catalog (`model/catalog.py: ARCHITECTURES`) and `tokenizer_path` names a
    Hugging Face directory (or `tokenizer.json`) with the tokenizer.
    """
    matrices = check_format(matrices)
    fmt = checkpoint_format(path)
    if fmt == "gguf":
        ckpt = open_gguf(path)
        cfg = ckpt.config
        params = params_from_hf(cfg, ckpt.tensor, dtype=dtype, matrices=matrices, stored=ckpt.blocks)
        return LoadedModel(cfg, HostWeights(params), gguf_tokenizer(ckpt), fmt, matrices)
    check_combination(fmt, matrices)
    if fmt == "maxtext":
        cfg, mt, tok = maxtext.load(
            path, dtype, matrices, model_name=model_name, tokenizer_path=tokenizer_path
        )
        return LoadedModel(cfg, mt, tok, fmt, matrices)

    hf = HFCheckpoint(path)
    if matrices not in SHARDED_FORMATS:  # block formats: quantized whole on host
        params = params_from_hf(hf.config, hf.tensor, dtype=dtype, matrices=matrices)
        return LoadedModel(hf.config, HostWeights(params), hf.tokenizer(), fmt, matrices)
    weights = StreamedWeights(hf.config, hf.read_rows, dtype, matrices)
    return LoadedModel(hf.config, weights, hf.tokenizer(), fmt, matrices)


def check_combination(fmt: Format, matrices: MatrixFormat) -> None:
    """A ValueError when a checkpoint format cannot give matrices in `matrices` format."""
    if fmt == "gguf" or matrices in SHARDED_FORMATS or (fmt == "hf" and matrices != "gguf"):
        return
    if matrices == "gguf":
        raise ValueError(
            f"matrix format 'gguf' keeps a GGUF file's blocks as stored, and this is a {fmt} checkpoint; "
            "pick q4_0, q4_1 or q8_0 to quantize it at load (Hugging Face checkpoints) or float/int8"
        )
    raise ValueError(
        f"matrix format {matrices!r} (llama.cpp blocks) is quantized at load from GGUF or Hugging Face "
        f"checkpoints only; a {fmt} checkpoint takes float or int8"
    )
