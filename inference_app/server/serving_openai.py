"""Serving logic of the OpenAI-compatible endpoints: completions, chat completions, models, and
vLLM's tokenizer routes (`/tokenize`, `/detokenize`, `/tokenizer_info`: lm-eval finds the
tokenizer through them, so it needs no Hugging Face download).

Called by `routes_openai.py` with a parsed request model; builds its answers from `protocol`
models. Every choice of a request (`n`, several prompts) is its own admitted generation; their
events are merged by `serving.respond`. Streaming uses server-sent events: one `data: <json chunk>`
per piece of text (chat opens with a chunk announcing the assistant role), a chunk with each
choice's `finish_reason`, a last chunk with `usage` and `choices: []` only when
`stream_options.include_usage` asks for it (`continuous_usage_stats`: usage on every chunk), then
`data: [DONE]`.

Log-probabilities (`logprobs`, chat's `top_logprobs`) come from the engine with each token, under
the raw model distribution (before temperature, top_k and top_p, as vLLM reports them); token
strings are each token decoded alone. With `echo`, completions score the prompt's own tokens too
(the first has no context: null), which is what lm-eval's loglikelihood tasks read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from inference_app.engine.api import Tokenizer, TokenLogprobs
from inference_app.orchestrator import Finished, TextDelta
from inference_app.orchestrator.grammar import GrammarError, GrammarSpec
from inference_app.server.errors import ApiError
from inference_app.server.openai_fields import Endpoint, UnsupportedField, screen
from inference_app.server.protocol import (
    AssistantMessage,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChatLogprobs,
    ChatMessage,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    DetokenizeRequest,
    DetokenizeResponse,
    FunctionCallOut,
    ModelCard,
    ModelList,
    NamedToolChoice,
    OpenAIRequest,
    ResponseModel,
    TokenizeRequest,
    TokenizeResponse,
    ToolCallOut,
    TopLogprob,
    UsageInfo,
)
from inference_app.server.serving import (
    SSE,
    Collected,
    Generation,
    check_token_ids,
    encode_chat,
    encode_prompt,
    loaded_engine,
    respond,
    start_generations,
)
from inference_app.server.state import ServingState
from inference_app.server.tool_calls import (
    Function,
    call_as_text,
    call_grammar,
    parse_tool_calls,
    tools_system_prompt,
)

log = logging.getLogger("inference_app.server")


@runtime_checkable
class HasHfConfig(Protocol):
    """A tokenizer that can describe itself as Hugging Face's tokenizer_config.json (`TextTokenizer`)."""

    def hf_config(self) -> dict[str, Any]: ...


def screener(endpoint: Endpoint) -> Any:
    """`parse_body`'s `prepare` step for an OpenAI endpoint (see `openai_fields`)."""

    def prepare(data: dict[str, Any]) -> dict[str, Any]:
        try:
            kept, dropped = screen(data, endpoint)
        except UnsupportedField as exc:
            raise ApiError(400, str(exc), exc.name) from None
        if dropped:
            log.debug("accepted without effect: %s", ", ".join(dropped))
        return kept

    return prepare


def check_model(state: ServingState, model: str | None) -> None:
    if model is not None and not state.options.serves(model):
        names = ", ".join(repr(n) for n in (state.options.model_name, *state.options.model_aliases))
        raise ApiError(404, f"Model {model!r} is not served here; this server serves {names}.", "model")


# ----- completions -------------------------------------------------------------------------------


class CompletionRenderer:
    """`text_completion` objects; a stream's chunks are the same object with a piece of text each.

    A choice's first piece carries its echo (the prompt text and, with logprobs, the prompt's
    scored tokens); `text_offset` counts characters from the start of the choice's text."""

    def __init__(
        self,
        request_id: str,
        model: str,
        body: CompletionRequest,
        echoes: list[str],
        gens: list[Generation],
        tokenizer: Tokenizer,
    ) -> None:
        self.id, self.created, self.model = f"cmpl-{request_id}", int(time.time()), model
        self.body, self.echoes, self.n = body, echoes, body.n  # echoes: per prompt, "" without echo
        self.gens, self.tokenizer = gens, tokenizer
        self._opened: set[int] = set()
        self._offsets: dict[int, int] = {}  # choice -> characters of its text so far

    def _response(
        self, choices: list[CompletionChoice], usage: UsageInfo | None = None
    ) -> CompletionResponse:
        return CompletionResponse(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )

    def _choice(
        self, index: int, text: str, logprobs: Sequence[TokenLogprobs], finish_reason: str | None = None
    ) -> CompletionChoice:
        """The choice's next piece: its echo first, if not sent yet."""
        scored: list[TokenLogprobs | None] = []
        if index not in self._opened:
            self._opened.add(index)
            text = self.echoes[index // self.n] + text
            prompt = self.gens[index].prompt_logprobs
            if prompt is not None:
                scored = [None, *prompt]  # the prompt's first token has no context to score
        entries = self._logprobs(index, scored, logprobs) if self.body.logprobs is not None else None
        return CompletionChoice(index=index, text=text, logprobs=entries, finish_reason=finish_reason)

    def _logprobs(
        self, index: int, scored: list[TokenLogprobs | None], generated: Sequence[TokenLogprobs]
    ) -> CompletionLogprobs | None:
        tokens: list[str] = []
        values: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        offsets: list[int] = []
        at = self._offsets.get(index, 0)
        prompt_ids = self.gens[index].request.prompt_ids
        for lp in [*scored, *generated]:
            token = self.tokenizer.decode([lp.token if lp is not None else prompt_ids[0]])
            tokens.append(token)
            offsets.append(at)
            at += len(token)
            if lp is None:
                values.append(None)
                tops.append(None)
            else:
                values.append(lp.logprob)
                top: dict[str, float] = {}
                for t, p in lp.top:  # most likely first: two tokens reading alike keep the higher
                    top.setdefault(self.tokenizer.decode([t]), p)
                top.setdefault(token, lp.logprob)  # the chosen token is always listed (as vLLM)
                tops.append(top)
        self._offsets[index] = at
        if not tokens:
            return None
        return CompletionLogprobs(
            tokens=tokens, token_logprobs=values, top_logprobs=tops, text_offset=offsets
        )

    def whole(self, results: list[Collected]) -> CompletionResponse:
        choices = [self._choice(i, r.text, r.logprobs, r.finished.reason) for i, r in enumerate(results)]
        finished = [r.finished for r in results]
        prompt = sum(f.prompt_tokens for f in finished[:: self.n])
        return self._response(choices, UsageInfo.of(prompt, sum(f.completion_tokens for f in finished)))

    def opening(self, choices: int) -> list[ResponseModel]:
        return []  # completions have no opening chunk

    def _progress(self, progress: UsageInfo) -> UsageInfo | None:
        return progress if self.body.continuous_usage else None

    def text(self, index: int, delta: TextDelta, progress: UsageInfo) -> CompletionResponse:
        return self._response([self._choice(index, delta.text, delta.logprobs)], self._progress(progress))

    def finished(self, index: int, finished: Finished, progress: UsageInfo) -> list[ResponseModel]:
        choice = self._choice(index, "", (), finished.reason)
        return [self._response([choice], self._progress(progress))]

    def closing(self, total: UsageInfo) -> list[ResponseModel]:
        return [self._response([], total)] if self.body.include_usage else []


async def serve_completion(state: ServingState, request: Request, body: CompletionRequest) -> Response:
    check_model(state, body.model)
    grammar = _output_grammar(body)
    _check_constrainable(state, grammar, "response_format")
    engine = loaded_engine(state)
    prompts: list[tuple[int, ...]] = []
    echoes: list[str] = []
    for i, prompt in enumerate(body.prompts()):
        param = "prompt" if i == 0 else f"prompt.{i}"
        if isinstance(prompt, str):
            prompts.append(await encode_prompt(state, prompt, param))
            echoes.append(prompt if body.echo else "")
        else:
            prompts.append(check_token_ids(state, prompt, param))
            echoes.append(engine.tokenizer.decode(prompt) if body.echo else "")
    gens = start_generations(state, request, body, prompts, body.max_tokens, body.n, grammar)
    renderer = CompletionRenderer(
        gens[0].request.request_id, state.options.model_name, body, echoes, gens, engine.tokenizer
    )
    return await respond(gens, body.stream, renderer, SSE, body.n)


# ----- chat --------------------------------------------------------------------------------------


def _functions(body: ChatCompletionRequest) -> list[Function]:
    if not body.tools or body.tool_choice == "none":
        return []
    return [
        Function(t.function.name, t.function.description or "", t.function.parameters or {"type": "object"})
        for t in body.tools
    ]


def _forced_call(body: ChatCompletionRequest, functions: list[Function]) -> GrammarSpec | None:
    """`tool_choice` "required" or a named function: the answer is exactly one call (of that
    function), its arguments valid against the function's schema."""
    choice = body.tool_choice
    if choice is None or choice in ("none", "auto"):
        return None
    if not functions:
        raise ApiError(400, "tool_choice: a forced tool call needs tools.", "tool_choice")
    if isinstance(choice, NamedToolChoice):
        functions = [f for f in functions if f.name == choice.function.name]
        if not functions:
            raise ApiError(
                400,
                f"tool_choice.function.name: no tool named {choice.function.name!r} in tools.",
                "tool_choice.function.name",
            )
    return _checked(lambda: call_grammar(functions), "tools")


def _output_grammar(body: OpenAIRequest) -> GrammarSpec | None:
    """`response_format` json_object / json_schema as a grammar; a schema the grammar engine cannot
    use (or, with strict, a keyword it cannot enforce) is a 400 naming the schema."""
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return GrammarSpec.json_object()
    if fmt.json_schema is None:
        raise ApiError(
            400, "response_format.json_schema: required with type json_schema.", "response_format.json_schema"
        )
    schema = fmt.json_schema.schema_
    if schema is None:  # OpenAI's schema is optional: then any JSON object
        return GrammarSpec.json_object()
    strict = bool(fmt.json_schema.strict)
    return _checked(lambda: GrammarSpec.json_schema(schema, strict), "response_format.json_schema.schema")


def _check_constrainable(state: ServingState, grammar: GrammarSpec | None, param: str) -> None:
    orchestrator = state.orchestrator
    if grammar is not None and orchestrator is not None and not orchestrator.structured_outputs:
        message = f"{param}: not supported by this engine (it cannot constrain its output: no token masks)."
        raise ApiError(400, message, param)


def _checked(build: Callable[[], GrammarSpec], param: str) -> GrammarSpec:
    try:
        spec = build()
        spec.check()
    except GrammarError as exc:
        raise ApiError(400, f"{param}: cannot constrain the output to it: {exc}", param) from None
    return spec


def template_messages(messages: list[ChatMessage], functions: list[Function]) -> list[dict[str, str]]:
    """OpenAI messages -> what a chat template reads: text content, `developer` as `system`, earlier
    tool calls written back as the model writes them."""
    out = []
    for i, m in enumerate(messages):
        try:
            text = m.text()
        except ValueError as exc:
            raise ApiError(400, f"messages.{i}.content: {exc}", f"messages.{i}.content") from None
        for call in m.tool_calls or []:
            text += call_as_text(call.function.name, call.function.arguments)
        out.append({"role": "system" if m.role == "developer" else m.role, "content": text})
    if functions:
        prompt = tools_system_prompt(functions)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


class ChatRenderer:
    """`chat.completion` for a whole answer, `chat.completion.chunk`s for a stream. With tools, a
    choice's text is held back until it ends, then sent as content or as tool_calls."""

    def __init__(
        self,
        request_id: str,
        model: str,
        body: ChatCompletionRequest,
        functions: list[Function],
        tokenizer: Tokenizer,
    ) -> None:
        self.id, self.created, self.model = f"chatcmpl-{request_id}", int(time.time()), model
        self.body, self.functions, self.tokenizer = body, functions, tokenizer
        self._held: dict[int, list[str]] = {}

    def _top(self, token: int, logprob: float) -> TopLogprob:
        text = self.tokenizer.decode([token])
        return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode("utf-8")))

    def _logprobs(self, logprobs: Sequence[TokenLogprobs]) -> ChatLogprobs | None:
        if not self.body.logprobs:
            return None
        content = []
        for lp in logprobs:
            chosen = self._top(lp.token, lp.logprob)
            top = [self._top(t, p) for t, p in lp.top]
            content.append(ChatTokenLogprob(**chosen.model_dump(), top_logprobs=top))
        return ChatLogprobs(content=content)

    def _chunk(
        self, choices: list[ChatCompletionStreamChoice], usage: UsageInfo | None = None
    ) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )

    def _message(self, text: str) -> AssistantMessage:
        if not self.functions:
            return AssistantMessage(content=text)
        content, calls = parse_tool_calls(text, self.functions)
        if not calls:
            return AssistantMessage(content=text)
        return AssistantMessage(
            content=content,
            tool_calls=[
                ToolCallOut(id=c.id, function=FunctionCallOut(name=c.name, arguments=c.arguments))
                for c in calls
            ],
        )

    @staticmethod
    def _reason(message: AssistantMessage, finished: Finished) -> str:
        return "tool_calls" if message.tool_calls else finished.reason

    def whole(self, results: list[Collected]) -> ChatCompletionResponse:
        choices = []
        for i, r in enumerate(results):
            message = self._message(r.text)
            choices.append(
                ChatCompletionChoice(
                    index=i,
                    message=message,
                    logprobs=self._logprobs(r.logprobs),
                    finish_reason=self._reason(message, r.finished),
                )
            )
        finished = [r.finished for r in results]
        usage = UsageInfo.of(finished[0].prompt_tokens, sum(f.completion_tokens for f in finished))
        return ChatCompletionResponse(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )

    def _progress(self, progress: UsageInfo) -> UsageInfo | None:
        return progress if self.body.continuous_usage else None

    def opening(self, choices: int) -> list[ResponseModel]:
        return [
            self._chunk(
                [
                    ChatCompletionStreamChoice(index=i, delta=DeltaMessage(role="assistant", content=""))
                    for i in range(choices)
                ]
            )
        ]

    def text(self, index: int, delta: TextDelta, progress: UsageInfo) -> ChatCompletionChunk:
        text = delta.text
        if self.functions:
            self._held.setdefault(index, []).append(text)
            text = ""
        choice = ChatCompletionStreamChoice(
            index=index, delta=DeltaMessage(content=text or None), logprobs=self._logprobs(delta.logprobs)
        )
        return self._chunk([choice], self._progress(progress))

    def finished(self, index: int, finished: Finished, progress: UsageInfo) -> list[ResponseModel]:
        delta, reason = DeltaMessage(), str(finished.reason)
        if self.functions:
            message = self._message("".join(self._held.pop(index, [])))
            calls = [c.model_copy(update={"index": k}) for k, c in enumerate(message.tool_calls or [])]
            delta = DeltaMessage(content=message.content, tool_calls=calls or None)
            reason = self._reason(message, finished)
        choice = ChatCompletionStreamChoice(index=index, delta=delta, finish_reason=reason)
        return [self._chunk([choice], self._progress(progress))]

    def closing(self, total: UsageInfo) -> list[ResponseModel]:
        return [self._chunk([], total)] if self.body.include_usage else []


async def serve_chat(state: ServingState, request: Request, body: ChatCompletionRequest) -> Response:
    check_model(state, body.model)
    functions = _functions(body)
    grammar, param = (_forced_call(body, functions), "tool_choice")
    if grammar is None:
        grammar, param = (_output_grammar(body), "response_format")
    _check_constrainable(state, grammar, param)
    prompt_ids = await encode_chat(state, template_messages(body.messages, functions))
    engine = loaded_engine(state)
    room = engine.max_target_length - len(prompt_ids)
    max_tokens = body.token_budget(default=max(1, min(state.options.chat_default_max_tokens, room)))
    gens = start_generations(state, request, body, [prompt_ids], max_tokens, body.n, grammar)
    renderer = ChatRenderer(
        gens[0].request.request_id, state.options.model_name, body, functions, engine.tokenizer
    )
    return await respond(gens, body.stream, renderer, SSE, body.n)


# ----- models and tokenizer routes ---------------------------------------------------------------


def _card(state: ServingState) -> ModelCard:
    max_model_len = state.engine.max_target_length if state.engine is not None else None
    return ModelCard(id=state.options.model_name, created=int(state.started_at), max_model_len=max_model_len)


def list_models(state: ServingState) -> ModelList:
    return ModelList(data=[_card(state)])


def get_model(state: ServingState, model: str) -> ModelCard:
    check_model(state, model)
    return _card(state)


async def tokenize(state: ServingState, body: TokenizeRequest) -> TokenizeResponse:
    """The prompt ids `/v1/completions` (prompt) or `/v1/chat/completions` (messages) would use."""
    check_model(state, body.model)
    engine = loaded_engine(state)
    if body.messages is None:
        ids = list(await encode_prompt(state, body.prompt or ""))
    else:
        ids = list(await encode_chat(state, template_messages(body.messages, []), body.add_generation_prompt))
    strs = [engine.tokenizer.decode([t]) for t in ids] if body.return_token_strs else None
    return TokenizeResponse(
        count=len(ids), max_model_len=engine.max_target_length, tokens=ids, token_strs=strs
    )


def detokenize(state: ServingState, body: DetokenizeRequest) -> DetokenizeResponse:
    check_model(state, body.model)
    ids = check_token_ids(state, body.tokens, "tokens")
    return DetokenizeResponse(prompt=loaded_engine(state).tokenizer.decode(list(ids)))


def tokenizer_info(state: ServingState) -> JSONResponse:
    """The tokenizer's Hugging Face config (eos/bos tokens, chat template), as vLLM's route."""
    engine = loaded_engine(state)
    info: dict[str, Any] = (
        dict(engine.tokenizer.hf_config()) if isinstance(engine.tokenizer, HasHfConfig) else {}
    )
    info["model_max_length"] = engine.max_target_length
    return JSONResponse(info)
