"""The contract between the engine (model core) and the orchestrator (serving).

The orchestrator drives one request through four stages, calling only what is declared here:

    prefill(prompt_ids, sampling) -> Prefix      # on the prefill device group
    transfer(prefix) -> Prefix                   # disaggregated: KV moves to the generate sharding
    insert(prefix, slot)                         # the prompt's KV lands in a free decode slot
    generate() -> StepOutput                     # one decode step for every slot at once
    release(slot)                                # the slot is free for the next request

Everything returned lives on device until the caller asks for it on host (`np.asarray`), so the
orchestrator can overlap host copies with the next step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

Mode = Literal["interleaved", "disaggregated"]


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling. temperature == 0 means greedy (top_k/top_p ignored)."""

    temperature: float = 0.0
    top_k: int = 0  # 0 disables top-k
    top_p: float = 1.0  # 1.0 disables nucleus sampling
    seed: int | None = None  # None: the engine picks one; same seed + prompt -> same tokens

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class Prefix:
    """A prefilled prompt: its first sampled token and its KV cache (device arrays)."""

    first_token: int
    length: int  # number of prompt tokens (the first generated token goes at position `length`)
    kv: Any  # engine-specific pytree of device arrays
    sampling: SamplingParams


@dataclass(frozen=True)
class StepOutput:
    """Result of one decode step: the next token of every slot (inactive slots hold junk)."""

    tokens: Any  # int32 array [max_slots], on device; np.asarray(...) copies to host
    # Slots that received a token in this step. None: every active slot (a plain decode step).
    # With chunked prefill, a slot whose prompt is still prefilling gets none, and one whose
    # prompt finished in this step gets its first token.
    slots: tuple[int, ...] | None = None


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


@dataclass(frozen=True)
class EngineSettings:
    """How to build an engine. Exactly one of `model` (catalog name) or `model_path` is set."""

    model: str | None = "smollm2-135m"
    model_path: str | None = None  # GGUF file, HF directory, or gs:// URL of either
    mode: Mode = "interleaved"
    # Limits; None: sized from the machine and the model (engine/kv_budget.py).
    max_slots: int | None = None  # sequences decoding at once
    max_prefill_length: int | None = None  # longest prompt
    max_target_length: int | None = None  # prompt + generated tokens of one sequence
    kv_cache_memory: int | None = None  # bytes of KV cache (None: a share of free memory)
    kv_block_size: int = 128  # tokens per block of the paged KV cache
    # Requests sharing a prompt prefix reuse its cached KV blocks (paged cache only).
    prefix_caching: bool = True
    weight_dtype: Literal["auto", "float32", "bfloat16", "int8"] = "auto"  # auto: fp32 CPU, bf16 TPU/GPU
    kv_dtype: Literal["auto", "float32", "bfloat16", "int8"] = "auto"
    # Mesh axes follow MaxText: fsdp x autoregressive x tensor; -1 fills the remaining devices.
    ici_fsdp_parallelism: int = 1
    ici_autoregressive_parallelism: int = 1
    ici_tensor_parallelism: int = -1
    compilation_cache_dir: str | None = ".jax_cache"
    # Prompts that may be prefilled in one call (same length bucket, at most
    # PREFILL_BATCH_TOKENS padded tokens): short prompts run as one larger, more efficient
    # matmul. Each (rows, bucket) shape is compiled during warm-up.
    max_prefill_batch: int = 1
    # Native decode kernels (inference_app/kernels) on a single CPU device; built on first use,
    # skipped with a warning where no C++ compiler is available.
    cpu_kernels: bool = True
    # Prefill prompts in chunks inside the decode steps (`add_prompt`), so new prompts never
    # pause decoding and are never padded to a bucket. Needs the CPU kernels (one CPU device,
    # float32 KV cache); elsewhere the separate prefill stage runs. `max_step_tokens` caps the
    # token rows of one step (decode rows + prompt chunks).
    chunked_prefill: bool = True
    max_step_tokens: int = 256


@runtime_checkable
class Engine(Protocol):
    settings: EngineSettings
    tokenizer: Tokenizer
    prefill_buckets: tuple[int, ...]  # padded prompt lengths that are compiled

    @property
    def max_slots(self) -> int: ...

    @property
    def max_prefill_length(self) -> int: ...

    @property
    def max_target_length(self) -> int: ...

    def prefill(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> Prefix: ...

    def transfer(self, prefix: Prefix) -> Prefix: ...

    def insert(self, prefix: Prefix, slot: int) -> None: ...

    def generate(self) -> StepOutput: ...

    def release(self, slot: int) -> None: ...

    def warmup(self) -> None:
        """Compile every prefill bucket, insert and generate, so the first request is fast."""
        ...
