"""The contract between the engine (model core) and the orchestrator (serving).

The orchestrator drives one request through four stages, calling only what is declared here:

    prefill(prompt_ids, sampling) -> Prefix      # on the prefill device group
    transfer(prefix) -> Prefix                   # disaggregated: KV moves to the generate sharding
    insert(prefix, slot)                         # the prompt's KV lands in a free decode slot
    generate() -> StepOutput                     # one decode step for every slot at once
    release(slot)                                # the slot is free for the next request

An engine may offer more, declared as capability protocols that the orchestrator checks once at
start-up (`batched_prefill`, `chunked_prefill`, `prompt_scoring`) to pick its code path:

    BatchedPrefill: prefill_many(prompts, samplings)   # prompts of one length bucket at once
    ChunkedPrefill: add_prompt(slot, ids, sampling)    # replaces prefill/transfer/insert: the
                                                       # prompt runs in chunks inside `generate`
    PromptScoring: score_prompt(ids, top)              # log-probabilities of the prompt's own tokens

Log-probabilities (`SamplingParams.logprobs`) are those of the raw model distribution, log_softmax
of the logits before temperature, top-k and top-p (what vLLM returns by default), so they do not
change with the sampling settings; a step computes them only when one of its slots asks.

Everything returned lives on device until the caller asks for it on host (`np.asarray`), so the
orchestrator can overlap host copies with the next step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from inference_app.engine.settings import EngineSettings, Mode


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling. temperature == 0 means greedy (top_k/top_p ignored)."""

    temperature: float = 0.0
    top_k: int = 0  # 0 disables top-k
    top_p: float = 1.0  # 1.0 disables nucleus sampling
    seed: int | None = None  # None: the engine picks one; same seed + prompt -> same tokens
    # None: no log-probabilities; k: each sampled token's and its k most likely alternatives'
    # (0 <= k <= MAX_TOP_LOGPROBS)
    logprobs: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


MAX_TOP_LOGPROBS = 20  # alternatives a step computes when asked (OpenAI's top_logprobs limit)


@dataclass(frozen=True)
class TokenLogprobs:
    """One token's log-probability and the most likely tokens at its position (host values)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (token, logprob), most likely first


@dataclass(frozen=True)
class StepLogprobs:
    """Log-probabilities of tokens sampled at several slots or positions (device or host arrays).

    Rows are slots for a step (`StepOutput`), positions for a prompt (`PromptScoring`)."""

    tokens: Any  # int32 [R]: the sampled (or prompt) token of each row
    chosen: Any  # float32 [R]: its log-probability
    top_ids: Any  # int32 [R, MAX_TOP_LOGPROBS], most likely first
    top_logprobs: Any  # float32 [R, MAX_TOP_LOGPROBS]

    def host(self) -> StepLogprobs:
        """The arrays copied to host (waits for the device)."""
        arrays = (self.tokens, self.chosen, self.top_ids, self.top_logprobs)
        return StepLogprobs(*(np.asarray(a) for a in arrays))

    def row(self, r: int, top: int) -> TokenLogprobs:
        """Row `r` with its `top` most likely alternatives (host arrays: call `host()` first)."""
        pairs = zip(self.top_ids[r, :top].tolist(), self.top_logprobs[r, :top].tolist(), strict=True)
        return TokenLogprobs(int(self.tokens[r]), float(self.chosen[r]), tuple(pairs))


@dataclass(frozen=True)
class Prefix:
    """A prefilled prompt: its first sampled token and its KV cache (device arrays)."""

    first_token: int
    length: int  # number of prompt tokens (the first generated token goes at position `length`)
    kv: Any  # engine-specific pytree of device arrays
    sampling: SamplingParams
    logprobs: TokenLogprobs | None = None  # of the first token, when `sampling.logprobs` asks


@dataclass(frozen=True)
class StepOutput:
    """Result of one decode step: the next token of every slot (inactive slots hold junk)."""

    tokens: Any  # int32 array [max_slots], on device; np.asarray(...) copies to host
    # Slots that received a token in this step. None: every active slot (a plain decode step).
    # With chunked prefill, a slot whose prompt is still prefilling gets none, and one whose
    # prompt finished in this step gets its first token.
    slots: tuple[int, ...] | None = None
    # Per slot (rows [max_slots]), on device; None when no slot of the step asked for them.
    logprobs: StepLogprobs | None = None


@runtime_checkable
class Tokenizer(Protocol):
    eos_token_ids: frozenset[int]
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without adding BOS/EOS (chat templates add their own markers)."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def apply_chat_template(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """Render messages with the model's own template (jinja2)."""
        ...

    def encode_chat(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of the rendered conversation; special-token text inside message contents is
        encoded as text, never as control tokens (no forged turns)."""
        ...


@runtime_checkable
class Engine(Protocol):
    """What every engine offers. Limits and facts are plain attributes, set once."""

    settings: EngineSettings  # how it was built (reported by the server; the orchestrator reads
    # only the attributes below)
    tokenizer: Tokenizer
    mode: Mode  # interleaved: prefill and generate share devices, so the orchestrator alternates them
    max_slots: int  # decode slots (requests decoding at once)
    max_prefill_length: int  # longest prompt
    max_target_length: int  # prompt + generated tokens per slot
    prefill_buckets: tuple[int, ...]  # padded prompt lengths that are compiled

    def prefill(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> Prefix: ...

    def transfer(self, prefix: Prefix) -> Prefix: ...

    def insert(self, prefix: Prefix, slot: int) -> None: ...

    def generate(self) -> StepOutput: ...

    def release(self, slot: int) -> None: ...

    def warmup(self) -> None:
        """Compile every shape a request can reach (prefill buckets, steps), so the first request is fast."""
        ...


@runtime_checkable
class BatchedPrefill(Protocol):
    """Several waiting prompts of one length bucket prefilled in one call."""

    def prefill_bucket(self, length: int) -> int:
        """The compiled length a prompt of `length` tokens is padded to."""
        ...

    def prefill_batch_rows(self, bucket: int) -> int:
        """How many prompts of `bucket` one `prefill_many` call takes (1: no batching)."""
        ...

    def prefill_many(
        self, prompts: Sequence[Sequence[int]], samplings: Sequence[SamplingParams]
    ) -> list[Prefix]:
        """What `prefill` gives for each prompt, in one call."""
        ...


@runtime_checkable
class ChunkedPrefill(Protocol):
    """Prompts prefilled in chunks inside the `generate` steps, next to the decoding slots.

    `add_prompt` then replaces prefill/transfer/insert: the prompt runs in the coming steps, and
    the step that runs its last token emits its first generated token (`StepOutput.slots`).
    """

    chunked_prefill: bool  # whether this engine runs that way (it may depend on the platform)
    step_buckets: tuple[int, ...]  # compiled token rows per step

    def add_prompt(
        self,
        slot: int,
        prompt_ids: Sequence[int],
        sampling: SamplingParams,
        max_new_tokens: int | None = None,
    ) -> None: ...

    def can_admit(self, prompt_ids: Sequence[int], max_new_tokens: int) -> bool:
        """Whether the KV cache can hold this request now (prompt + `max_new_tokens`, less its
        cached prefix); one that cannot waits until running requests free blocks."""
        ...


@runtime_checkable
class PromptScoring(Protocol):
    """Log-probabilities of a prompt's own tokens (completions' `echo` with `logprobs`: what
    lm-eval's loglikelihood tasks read). Touches only the prefill parameters, like `prefill`."""

    def score_prompt(self, prompt_ids: Sequence[int], top: int) -> list[TokenLogprobs]:
        """For every prompt token after the first: its log-probability given the tokens before it
        and the `top` (<= MAX_TOP_LOGPROBS) most likely tokens at its position."""
        ...


def batched_prefill(engine: Engine) -> BatchedPrefill | None:
    """`engine` as a `BatchedPrefill`, or None when it prefills one prompt per call."""
    return engine if isinstance(engine, BatchedPrefill) else None


def chunked_prefill(engine: Engine) -> ChunkedPrefill | None:
    """`engine` as a `ChunkedPrefill` when it prefills inside its steps, else None."""
    return engine if isinstance(engine, ChunkedPrefill) and engine.chunked_prefill else None


def prompt_scoring(engine: Engine) -> PromptScoring | None:
    """`engine` as a `PromptScoring` when it scores prompts, else None."""
    return engine if isinstance(engine, PromptScoring) else None
