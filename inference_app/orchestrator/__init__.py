"""Serving orchestrator: admission, prefill -> transfer -> generate -> detokenize, continuous batching.

See `pipeline.py` for the walk of one request through the stages.
"""

from inference_app.orchestrator.metrics import ServingMetrics
from inference_app.orchestrator.pipeline import Orchestrator
from inference_app.orchestrator.request import (
    BadRequest,
    Event,
    Failed,
    Finished,
    GenerationRequest,
    Job,
    PromptLogprobs,
    QueueFull,
    RequestRejected,
    Sink,
    TextDelta,
    Unavailable,
    new_request_id,
)

__all__ = [
    "BadRequest",
    "Event",
    "Failed",
    "Finished",
    "GenerationRequest",
    "Job",
    "Orchestrator",
    "PromptLogprobs",
    "QueueFull",
    "RequestRejected",
    "ServingMetrics",
    "Sink",
    "TextDelta",
    "Unavailable",
    "new_request_id",
]
