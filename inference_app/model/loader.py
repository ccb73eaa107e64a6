"""Open any supported checkpoint: a GGUF file, or a Hugging Face directory (local or gs://).

The model package's entry point: the engine (`engine.model_for`) calls `load_model` and gets the
parameters, config and tokenizer on host, which it then places on its meshes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inference_app.model.config import ModelConfig
from inference_app.model.tokenizer import TextTokenizer
from inference_app.model.transformer import Params
from inference_app.model.weights import params_from_hf
from inference_app.model.weights_gguf import GGUFCheckpoint, gguf_tokenizer
from inference_app.model.weights_hf import HFCheckpoint


@dataclass
class LoadedModel:
    config: ModelConfig
    params: Params  # host (numpy) arrays, our layout
    tokenizer: TextTokenizer


def load_model(path: str, dtype: Any, int8: bool = False) -> LoadedModel:
    """Load weights (as `dtype`, or int8 matrices) and the tokenizer from `path`."""
    if path.endswith(".gguf"):
        ckpt = GGUFCheckpoint(path)
        cfg = ckpt.config
        params = params_from_hf(cfg, ckpt.tensor, dtype=dtype, int8=int8)
        return LoadedModel(cfg, params, gguf_tokenizer(ckpt))
    hf = HFCheckpoint(path)
    params = params_from_hf(hf.config, hf.tensor, dtype=dtype, int8=int8)
    return LoadedModel(hf.config, params, hf.tokenizer())
