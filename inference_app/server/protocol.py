"""The HTTP API's wire format: every request body and every response body, as Pydantic models.

First and last stop of a request in the server: a route parses its body into a request model here
(`errors.parse_body`), the serving logic (`serving_*.py`) turns orchestrator events into response
models here, and only then are they serialized. Nothing else in the server builds a response dict.

Requests are strict: "200" is not an int and unknown keys are errors, so a typo such as
`max_token` or a string where a number belongs gets a 400 naming the field instead of being
silently ignored or coerced.

Responses derive from `ResponseModel`: `body()` is the JSON-ready dict, and a field listed in a
model's `OMIT_IF_NONE` is left out when it is None (OpenAI sends `usage` only in the last stream
chunk, and a chat delta holds only the keys that changed), while every other None is sent as null.

Sections, each easy to extend on its own: shared request fields, errors, JetStream `/generate`,
OpenAI completions, OpenAI chat, models and health.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.config import JsonDict

from inference_app.engine.api import SamplingParams

# ----- shared request fields ---------------------------------------------------------------------

# Largest values accepted at all (the engine's own limits are checked later, with their numbers).
MAX_TOKENS_CAP = 1 << 20
MAX_STOP_STRINGS = 8
MAX_SEED = 2**63 - 1

PositiveInt = Annotated[int, Field(ge=1, le=MAX_TOKENS_CAP)]
StopList = Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP_STRINGS)]
StopField = Annotated[str | StopList | None, Field(default=None)]
_ONLY_ZERO: JsonDict = {"minimum": 0, "maximum": 0}  # the schema says what the validator enforces


class StrictRequest(BaseModel):
    """Base of every request body: strict types, unknown keys rejected."""

    model_config = ConfigDict(strict=True, extra="forbid")


class SamplingRequest(StrictRequest):
    """Sampling fields shared by all generation endpoints."""

    temperature: float = Field(default=0.0, ge=0.0, le=100.0)
    top_k: int = Field(default=0, ge=-1, le=1_000_000, description="0 or -1 disables top-k")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stop: StopField
    ignore_eos: bool = Field(default=False, description="keep generating past EOS (benchmarks)")

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        items = [v] if isinstance(v, str) else (v or [])
        if len(items) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        if any(not s for s in items):
            raise ValueError("stop strings must be non-empty")
        return v

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature, top_k=max(self.top_k, 0), top_p=self.top_p, seed=self.seed
        )

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ResponseModel(BaseModel):
    """Base of every response body; see the module docstring for `OMIT_IF_NONE`."""

    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_unset_optionals(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in self.OMIT_IF_NONE:
            if data.get(name) is None:
                data.pop(name, None)
        return data

    def body(self) -> dict[str, Any]:
        """The JSON-ready dict (what `JSONResponse` or a stream frame serializes)."""
        return self.model_dump(mode="json")


class UsageInfo(ResponseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> UsageInfo:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


# ----- errors ------------------------------------------------------------------------------------

# OpenAI-style `type` of an error answer, by HTTP status.
ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


class ErrorInfo(ResponseModel):
    message: str
    type: str
    param: str | None
    code: int  # the HTTP status
    request_id: str  # also the response's X-Request-Id header


class ErrorResponse(ResponseModel):
    """The one error body, whether it is a whole answer or the last line/event of a stream."""

    error: ErrorInfo

    @classmethod
    def of(cls, status: int, message: str, param: str | None = None, request_id: str = "") -> ErrorResponse:
        info = ErrorInfo(
            message=message,
            type=ERROR_TYPES.get(status, "error"),
            param=param,
            code=status,
            request_id=request_id,
        )
        return cls(error=info)


# ----- JetStream-http POST /generate -------------------------------------------------------------


class GenerateRequest(SamplingRequest):
    """JetStream-http `POST /generate`. Greedy unless `temperature` > 0."""

    prompt: str = Field(min_length=1)
    max_tokens: PositiveInt = 128
    stream: bool = False


class GenerateResponse(ResponseModel):
    """The whole continuation, or (streaming) one NDJSON line of new text."""

    response: str


class GenerateFinalChunk(ResponseModel):
    """The last NDJSON line of a streamed `/generate`."""

    response: str = ""
    finish_reason: str
    usage: UsageInfo


# ----- OpenAI: fields common to completions and chat ---------------------------------------------


class OpenAIRequest(SamplingRequest):
    """Fields common to the OpenAI endpoints; unsupported options are rejected, not ignored."""

    model: str | None = None
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)  # OpenAI's default
    stream: bool = False
    stream_options: dict[str, bool] | None = None
    n: Literal[1] = 1
    user: str | None = None
    presence_penalty: float = Field(default=0.0, json_schema_extra=_ONLY_ZERO)
    frequency_penalty: float = Field(default=0.0, json_schema_extra=_ONLY_ZERO)
    logprobs: None = None

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalties(cls, v: float) -> float:
        if v != 0:
            raise ValueError("penalties are not supported; send 0 or leave the field out")
        return v

    @model_validator(mode="after")
    def _check_stream_options(self) -> OpenAIRequest:
        if self.stream_options is not None:
            unknown = set(self.stream_options) - {"include_usage", "continuous_usage_stats"}
            if unknown:
                raise ValueError(f"unknown stream_options: {sorted(unknown)}")
        return self


class OpenAIResponse(ResponseModel):
    """Fields every OpenAI completion object and stream chunk opens with (`choices` and `usage`
    follow in each subclass; `usage` is left out of all stream chunks but the last)."""

    OMIT_IF_NONE = frozenset({"usage"})

    id: str
    object: str
    created: int
    model: str


# ----- OpenAI POST /v1/completions ---------------------------------------------------------------


class CompletionRequest(OpenAIRequest):
    """`POST /v1/completions`: one prompt (a string, or a list holding one string)."""

    prompt: str | list[str]
    max_tokens: PositiveInt = 16  # OpenAI's default
    echo: Literal[False] = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str | list[str]:
        items = [v] if isinstance(v, str) else v
        if len(items) != 1:
            raise ValueError("exactly one prompt per request is supported (send several requests)")
        if not items[0]:
            raise ValueError("the prompt is empty")
        return v

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class CompletionChoice(ResponseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None = None


class CompletionResponse(OpenAIResponse):
    """A whole completion (`object: text_completion`) or one stream chunk of it (same object name)."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


# ----- OpenAI POST /v1/chat/completions ----------------------------------------------------------


class ChatMessage(StrictRequest):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(OpenAIRequest):
    """`POST /v1/chat/completions`: rendered with the model's own chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None

    def token_budget(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


class AssistantMessage(ResponseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionChoice(ResponseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str | None


class ChatCompletionResponse(OpenAIResponse):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatCompletionChoice]
    usage: UsageInfo


class DeltaMessage(ResponseModel):
    """What a chat stream chunk adds; keys that did not change are left out."""

    OMIT_IF_NONE = frozenset({"role", "content"})

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatCompletionStreamChoice(ResponseModel):
    index: int = 0
    delta: DeltaMessage
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(OpenAIResponse):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatCompletionStreamChoice]
    usage: UsageInfo | None = None


# ----- models and health -------------------------------------------------------------------------


class ModelCard(ResponseModel):
    OMIT_IF_NONE = frozenset({"max_model_len"})

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "inference_app"
    max_model_len: int | None = None  # once the engine is loaded


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Liveness(ResponseModel):
    OMIT_IF_NONE = frozenset({"phase", "error"})

    is_live: bool
    phase: str | None = None  # when not live
    error: str | None = None  # when start-up or the device loop failed


class HealthResponse(ResponseModel):
    """JetStream-http `GET /healthcheck`."""

    response: Liveness


class ServerInfo(ResponseModel):
    """`GET /`: what is serving and how it is configured (engine fields once it is loaded)."""

    OMIT_IF_NONE = frozenset(
        {"mode", "max_slots", "max_prefill_length", "max_target_length", "prefill_buckets", "active_slots",
         "queue_depth"}
    )

    service: str = "inference_app"
    model: str
    phase: str
    endpoints: list[str]
    mode: str | None = None
    max_slots: int | None = None
    max_prefill_length: int | None = None
    max_target_length: int | None = None
    prefill_buckets: list[int] | None = None
    active_slots: int | None = None
    queue_depth: int | None = None
