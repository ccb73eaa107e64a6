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

from inference_app.engine.api import MAX_TOP_LOGPROBS, SamplingParams

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
            temperature=self.temperature,
            top_k=max(self.top_k, 0),
            top_p=self.top_p,
            seed=self.seed,
            logprobs=self.logprobs_count(),
        )

    def logprobs_count(self) -> int | None:
        """Alternatives per generated token when the request asks for log-probabilities."""
        return None

    def prompt_logprobs_count(self) -> int | None:
        """Alternatives per prompt token when the request asks for the prompt's log-probabilities."""
        return None

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
    408: "request_timeout",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "rate_limit_error",
    431: "request_header_fields_too_large",
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
    """JetStream-http `POST /generate`. Greedy unless `temperature` > 0.

    Like jetstream-http's own model (pydantic's lax mode), numbers and booleans sent as strings are
    coerced ("max_tokens": "5"); its routing fields `server`, `port`, `session_cache` and `priority`
    are accepted and have no effect here. Unknown fields are still refused.
    """

    model_config = ConfigDict(strict=False, extra="forbid")

    prompt: str = Field(min_length=1)
    max_tokens: PositiveInt = 128
    stream: bool = False
    server: str | int | None = None  # jetstream-http: the gRPC server it forwards to
    port: str | int | None = None
    session_cache: str | None = None
    priority: int | None = None


class GenerateResponse(ResponseModel):
    """The whole continuation."""

    response: str


class GenerateChunk(ResponseModel):
    """One NDJSON line of a streamed `/generate`: jetstream-http's chunk (`id`, `time_created`,
    `text`), plus `response` (the same text, this server's earlier key); the last line adds
    `finish_reason` and `usage`."""

    OMIT_IF_NONE = frozenset({"finish_reason", "usage"})

    id: str
    time_created: float
    text: str
    response: str
    finish_reason: str | None = None
    usage: UsageInfo | None = None


class DecodeTextContent(StrictRequest):
    model_config = ConfigDict(strict=True, extra="forbid", str_strip_whitespace=True)

    text: str = Field(min_length=1)


class DecodeTokenContent(StrictRequest):
    token_ids: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)


class DecodeMetadata(StrictRequest):
    start_time: float


class DecodeRequest(StrictRequest):
    """JetStream's own `POST /v1/generate` (jetstream/entrypoints/http/protocol.py): text or token ids."""

    max_tokens: PositiveInt
    text_content: DecodeTextContent | None = None
    token_content: DecodeTokenContent | None = None
    metadata: DecodeMetadata | None = None

    @model_validator(mode="after")
    def _one_content(self) -> DecodeRequest:
        if (self.text_content is None) == (self.token_content is None):
            raise ValueError("send exactly one of text_content or token_content")
        return self


class DecodeSample(ResponseModel):
    OMIT_IF_NONE = frozenset({"text", "tokenIds"})

    text: str | None = None
    tokenIds: list[int] | None = None


class DecodeStreamContent(ResponseModel):
    samples: list[DecodeSample]


class DecodeResponse(ResponseModel):
    """One message of JetStream's stream, as protobuf's MessageToJson writes a DecodeResponse."""

    streamContent: DecodeStreamContent


class JetStreamHealth(ResponseModel):
    """JetStream's `GET /v1/health`: `is_live` is the *string* "True" or "False" there."""

    is_live: Literal["True", "False"]


# ----- OpenAI: fields common to completions and chat ---------------------------------------------


MAX_CHOICES = 8  # n
MAX_PROMPTS = 32  # prompts in one /v1/completions request


class StreamOptions(StrictRequest):
    include_usage: bool | None = None  # a last chunk with usage and `choices: []`
    continuous_usage_stats: bool | None = None  # vLLM: usage on every chunk (guidellm asks for it)
    include_obfuscation: bool | None = None  # accepted; nothing is obfuscated


class JsonSchemaFormat(StrictRequest):
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(StrictRequest):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class OpenAIRequest(SamplingRequest):
    """Fields common to the OpenAI endpoints. Before validation `openai_fields.screen` has removed
    the fields accepted without effect and explicit nulls (OpenAI's "use the default")."""

    model: str | None = None
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)  # OpenAI's default
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    response_format: ResponseFormat | None = None  # completions: a vLLM extension, as in chat

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and (self.stream_options.include_usage or self.continuous_usage))

    @property
    def continuous_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.continuous_usage_stats)


class OpenAIResponse(ResponseModel):
    """Fields every OpenAI completion object and stream chunk opens with (`choices` and `usage`
    follow in each subclass; `usage` is left out of all stream chunks but the last)."""

    OMIT_IF_NONE = frozenset({"usage"})

    id: str
    object: str
    created: int
    model: str


# ----- OpenAI POST /v1/completions ---------------------------------------------------------------


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
PromptText = Annotated[str, Field(min_length=1)]


class CompletionRequest(OpenAIRequest):
    """`POST /v1/completions`: a prompt, several prompts, token ids, or several token-id lists.

    `echo` with `logprobs` scores the prompt's own tokens too (lm-eval's loglikelihood tasks), and
    then `max_tokens` may be 0: the prompt is scored and nothing is generated."""

    prompt: PromptText | list[PromptText] | TokenIds | list[TokenIds]
    max_tokens: int = Field(default=16, ge=0, le=MAX_TOKENS_CAP)  # OpenAI's default
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _zero_tokens_only_to_score(self) -> CompletionRequest:
        if self.max_tokens == 0 and self.prompt_logprobs_count() is None:
            raise ValueError("max_tokens must be >= 1 (0 only with echo and logprobs: scoring the prompt)")
        return self

    def logprobs_count(self) -> int | None:
        return self.logprobs

    def prompt_logprobs_count(self) -> int | None:
        return self.logprobs if self.echo else None

    @field_validator("prompt")
    @classmethod
    def _some_prompts(cls, v: str | list[str] | list[int] | list[list[int]]) -> object:
        count = 1 if isinstance(v, str) or (v and isinstance(v[0], int)) else len(v)
        if count == 0:
            raise ValueError("at least one prompt is needed")
        if count > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
        return v

    def prompts(self) -> list[str | list[int]]:
        """Each prompt: text, or token ids."""
        v = self.prompt
        if isinstance(v, str) or (v and isinstance(v[0], int)):
            return [v]
        return list(v)  # type: ignore[arg-type]


class CompletionLogprobs(ResponseModel):
    """Legacy completions' log-probabilities: one entry per token (the prompt's first: null)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]  # where each token's text starts in the choice's text


class CompletionChoice(ResponseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(OpenAIResponse):
    """A whole completion (`object: text_completion`) or one stream chunk of it (same object name)."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


# ----- OpenAI POST /v1/chat/completions ----------------------------------------------------------


class ContentPart(StrictRequest):
    """One part of a message's content; only text reaches this text-only model."""

    type: Literal["text", "image_url", "input_audio", "file", "refusal"]
    text: str | None = None
    refusal: str | None = None
    image_url: dict[str, Any] | None = None
    input_audio: dict[str, Any] | None = None
    file: dict[str, Any] | None = None


class FunctionCallIn(StrictRequest):
    name: str
    arguments: str


class ToolCallIn(StrictRequest):
    """An earlier tool call in the conversation (an assistant message's `tool_calls`)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessage(StrictRequest):
    role: Literal["developer", "system", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None  # informational
    tool_calls: list[ToolCallIn] | None = None  # assistant
    tool_call_id: str | None = None  # tool
    refusal: str | None = None  # assistant, informational

    def text(self) -> str:
        """The content as one string; 400 (ValueError) for a part this text-only model cannot read."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        pieces = []
        for part in self.content:
            if part.type == "text" and part.text is not None:
                pieces.append(part.text)
            elif part.type == "refusal" and part.refusal is not None:
                pieces.append(part.refusal)
            else:
                raise ValueError(
                    f"content parts of type {part.type!r} are not supported (the model reads text only)"
                )
        return "\n".join(pieces)


class FunctionDef(StrictRequest):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(StrictRequest):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(StrictRequest):
    name: str


class NamedToolChoice(StrictRequest):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(OpenAIRequest):
    """`POST /v1/chat/completions`: rendered with the model's own chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def token_budget(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default

    def logprobs_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class FunctionCallOut(ResponseModel):
    name: str
    arguments: str  # JSON text


class ToolCallOut(ResponseModel):
    OMIT_IF_NONE = frozenset({"index"})

    index: int | None = None  # stream deltas only
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(ResponseModel):
    OMIT_IF_NONE = frozenset({"tool_calls"})

    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


class TopLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int]  # the token's UTF-8 bytes (a token may hold part of a character)


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(ResponseModel):
    content: list[ChatTokenLogprob] | None
    refusal: list[ChatTokenLogprob] | None = None


class ChatCompletionChoice(ResponseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None


class ChatCompletionResponse(OpenAIResponse):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatCompletionChoice]
    usage: UsageInfo


class DeltaMessage(ResponseModel):
    """What a chat stream chunk adds; keys that did not change are left out."""

    OMIT_IF_NONE = frozenset({"role", "content", "tool_calls"})

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallOut] | None = None


class ChatCompletionStreamChoice(ResponseModel):
    index: int = 0
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(OpenAIResponse):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatCompletionStreamChoice]
    usage: UsageInfo | None = None


# ----- vLLM's tokenizer routes: /tokenize, /detokenize, /tokenizer_info ---------------------------


class TokenizeRequest(StrictRequest):
    """`POST /tokenize`: a prompt, or chat messages rendered with the model's template (as vLLM)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = True  # messages only
    add_special_tokens: bool = True  # accepted: this tokenizer adds no BOS/EOS of its own
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send exactly one of prompt or messages")
        return self


class TokenizeResponse(ResponseModel):
    OMIT_IF_NONE = frozenset({"token_strs"})

    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(StrictRequest):
    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0)]]


class DetokenizeResponse(ResponseModel):
    prompt: str


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
        {
            "mode",
            "max_slots",
            "max_prefill_length",
            "max_target_length",
            "prefill_buckets",
            "active_slots",
            "queue_depth",
        }
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
