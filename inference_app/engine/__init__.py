"""Engine: the model core the orchestrator drives (see `api.py` for the contract).

`load_engine` and `JaxEngine` are imported lazily so that importing the contract (`api`) never
pulls in JAX.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from inference_app.engine.api import Engine, Prefix, SamplingParams, StepOutput, Tokenizer
from inference_app.engine.settings import EngineSettings

if TYPE_CHECKING:
    from inference_app.engine.engine import JaxEngine, load_engine

__all__ = [
    "Engine",
    "EngineSettings",
    "JaxEngine",
    "Prefix",
    "SamplingParams",
    "StepOutput",
    "Tokenizer",
    "load_engine",
]


def __getattr__(name: str) -> Any:
    if name in ("JaxEngine", "load_engine"):
        from inference_app.engine import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
