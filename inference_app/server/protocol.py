"""Request bodies of every endpoint (Pydantic, strict: "200" is not an int, unknown keys are errors).

Strictness is deliberate: a typo such as `max_token` or a string where a number belongs gets a
400 naming the field instead of being silently ignored or coerced.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.config import JsonDict

from inference_app.engine.api import SamplingParams

# Largest values accepted at all (the engine's own limits are checked later, with their numbers).
MAX_TOKENS_CAP = 1 << 20
MAX_STOP_STRINGS = 8
MAX_SEED = 2**63 - 1

PositiveInt = Annotated[int, Field(ge=1, le=MAX_TOKENS_CAP)]
StopList = Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP_STRINGS)]
StopField = Annotated[str | StopList | None, Field(default=None)]
_ONLY_ZERO: JsonDict = {"minimum": 0, "maximum": 0}  # the schema says what the validator enforces


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class _Sampling(_Strict):
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


class GenerateRequest(_Sampling):
    """JetStream-http `POST /generate`. Greedy unless `temperature` > 0."""

    prompt: str = Field(min_length=1)
    max_tokens: PositiveInt = 128
    stream: bool = False


class _OpenAIBase(_Sampling):
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
    def _check_stream_options(self) -> _OpenAIBase:
        if self.stream_options is not None:
            unknown = set(self.stream_options) - {"include_usage", "continuous_usage_stats"}
            if unknown:
                raise ValueError(f"unknown stream_options: {sorted(unknown)}")
        return self


class CompletionRequest(_OpenAIBase):
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


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(_OpenAIBase):
    """`POST /v1/chat/completions`: rendered with the model's own chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None

    def token_budget(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default
