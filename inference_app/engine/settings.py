"""How to build an engine (`EngineSettings`), and the one mapping from command-line flags onto it.

Sits between the commands and the engine: `serve`, `batch --local` and `generate` each call
`add_engine_arguments(parser)` and `settings_from_args(args)`, then hand the settings to
`load_engine` (`engine/engine.py`). A flag therefore means the same thing, with the same default,
choices and error message, in every command. Imports no JAX.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from typing import Literal

from inference_app.engine.kv_budget import parse_size
from inference_app.model.catalog import ARCHITECTURES, CATALOG, DEFAULT_MODEL

Mode = Literal["interleaved", "disaggregated"]
Dtype = Literal["auto", "float32", "bfloat16", "int8"]
# Weights also take llama.cpp's block formats (quantized at load unless a GGUF file stores them
# so) and `gguf`: every matrix as the GGUF file stores it (see `model/weights.py`).
WeightDtype = Literal["auto", "float32", "bfloat16", "int8", "q4_0", "q4_1", "q8_0", "gguf"]


@dataclass(frozen=True)
class EngineSettings:
    """How to build an engine: `model` (catalog name), `model_path`, or both (see below)."""

    # `model` alone: an embedded model (`CATALOG`). With `model_path`: the architecture
    # (`ARCHITECTURES`) of a MaxText checkpoint, which carries no config; None for HF and GGUF.
    model: str | None = DEFAULT_MODEL
    model_path: str | None = None  # GGUF file, HF directory, MaxText (Orbax) directory; local or gs://
    tokenizer_path: str | None = None  # MaxText checkpoints: HF directory (or tokenizer.json)
    mode: Mode = "interleaved"
    # Limits; None: sized from the machine's free memory and the model (engine/kv_budget.py).
    max_slots: int | None = None  # sequences decoding at once
    max_prefill_length: int | None = None  # longest prompt
    max_target_length: int | None = None  # prompt + generated tokens of one sequence
    kv_cache_memory: int | None = None  # bytes of KV cache (None: sized in engine/kv_budget.py)
    kv_block_size: int = 128  # tokens per block of the paged KV cache
    # Requests sharing a prompt prefix reuse its cached KV blocks (paged cache only).
    prefix_caching: bool = True
    weight_dtype: WeightDtype = "auto"  # auto: policy.resolve_weight_dtype
    kv_dtype: Dtype = "auto"
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
    # Prefill prompts in chunks inside the decode steps (`add_prompt`) over the paged KV cache,
    # so new prompts never pause decoding and are never padded to a bucket. Needs the CPU kernels
    # (one CPU device, float32 KV cache); elsewhere the separate prefill stage and a slot cache
    # run. `max_step_tokens` caps the token rows of one step (decode rows + prompt chunks).
    chunked_prefill: bool = True
    max_step_tokens: int = 256


_DEFAULT = EngineSettings()
DTYPES: tuple[str, ...] = typing.get_args(Dtype)
WEIGHT_DTYPES: tuple[str, ...] = typing.get_args(WeightDtype)
MODES: tuple[str, ...] = typing.get_args(Mode)
# The flags of a serving engine (many requests at once) whose dest is the field's own name.
_SERVING_FIELDS = (
    "mode",
    "max_slots",
    "max_prefill_length",
    "max_target_length",
    "kv_cache_memory",
    "kv_block_size",
    "max_prefill_batch",
    "max_step_tokens",
    "ici_fsdp_parallelism",
    "ici_autoregressive_parallelism",
    "ici_tensor_parallelism",
)


class SettingsError(ValueError):
    """Flags that cannot build an engine; the message names the flag and the fix."""


def positive_int(text: str) -> int:
    """argparse type for counts and lengths: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def memory_size(text: str) -> int:
    """argparse type for a memory size: 4GiB, 512MiB, 1.5G or a byte count."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _parallelism(text: str) -> int:
    value = int(text)
    if value < 1 and value != -1:
        raise argparse.ArgumentTypeError(f"must be >= 1, or -1 to fill the remaining devices; got {value}")
    return value


def add_engine_arguments(
    parser: argparse.ArgumentParser,
    *,
    serving: bool = True,
    title: str = "model and engine",
    model_help: str = f"catalog model: one of {', '.join(sorted(CATALOG))} (default {DEFAULT_MODEL}: the "
    "embedded SmolLM2-135M-Instruct)",
) -> None:
    """Add the engine's flags to a command's parser, defaults taken from `EngineSettings`.

    `serving=False` leaves out what sizes an engine for many requests (mode, slots, lengths,
    batching, mesh): a command that sizes the engine to its own request (`generate`) sets those.
    `title` and `model_help` let a command say when the flags apply (`batch`: only with --local).
    """
    m = parser.add_argument_group(title)
    m.add_argument(
        "--model",
        default=None,
        help=f"{model_help}; with --model-path of a MaxText checkpoint, its architecture: one of "
        f"{', '.join(sorted(ARCHITECTURES))}",
    )
    m.add_argument(
        "--model-path",
        default=None,
        help="GGUF file, Hugging Face directory or MaxText (Orbax) checkpoint directory; local or gs://",
    )
    m.add_argument(
        "--tokenizer-path",
        default=None,
        help="with a MaxText --model-path: Hugging Face directory (or tokenizer.json) of the same model",
    )
    m.add_argument(
        "--weight-dtype",
        choices=WEIGHT_DTYPES,
        default=_DEFAULT.weight_dtype,
        help="auto: a GGUF file's matrices as stored (gguf) on one CPU device with the native "
        "kernels, else float32 on CPU, bfloat16 on TPU/GPU; int8: per-channel int8; q4_0/q4_1/q8_0: "
        "llama.cpp's block formats (kept as stored when a GGUF file has them, else quantized at "
        "load); gguf: every matrix as the GGUF file stores it (default %(default)s)",
    )
    m.add_argument(
        "--kv-dtype", choices=DTYPES, default=_DEFAULT.kv_dtype, help="KV cache dtype (default %(default)s)"
    )
    m.add_argument(
        "--compilation-cache-dir",
        default=_DEFAULT.compilation_cache_dir,
        help="persistent XLA compilation cache ('' disables; default %(default)s)",
    )
    if not serving:
        return
    m.add_argument(
        "--mode",
        choices=MODES,
        default=_DEFAULT.mode,
        help="interleaved: one device group prefills and decodes; disaggregated: devices split "
        "in two halves, prefill on one and decode on the other (default %(default)s)",
    )
    m.add_argument(
        "--max-slots",
        type=positive_int,
        default=_DEFAULT.max_slots,
        help="requests generated concurrently (default: sized from the KV cache memory; see docs/model.md)",
    )
    m.add_argument(
        "--max-prefill-length",
        type=positive_int,
        default=_DEFAULT.max_prefill_length,
        help="longest prompt in tokens; longer prompts get 400 (default: the sequence length - 1 with "
        "chunked prefill, else at most 512)",
    )
    m.add_argument(
        "--max-target-length",
        type=positive_int,
        default=_DEFAULT.max_target_length,
        help="prompt + generated tokens of one request (default: the model's context, if the KV cache "
        "memory holds it)",
    )
    m.add_argument(
        "--kv-cache-memory",
        type=memory_size,
        default=_DEFAULT.kv_cache_memory,
        help="memory for the KV cache, e.g. 4GiB (default on CPU: a full context, or per slot a chat "
        "turn and as much for cached prefixes; see docs/model.md)",
    )
    m.add_argument(
        "--kv-block-size",
        type=positive_int,
        default=_DEFAULT.kv_block_size,
        help="tokens per block of the paged KV cache (default %(default)s)",
    )
    m.add_argument(
        "--no-prefix-caching",
        action="store_true",
        help="do not reuse the KV blocks of prompt prefixes shared between requests",
    )
    m.add_argument(
        "--max-prefill-batch",
        type=positive_int,
        default=_DEFAULT.max_prefill_batch,
        help="separate prefill stage: prompts of one length bucket prefilled together (short "
        "prompts only; each batch shape is compiled during warm-up; default %(default)s)",
    )
    m.add_argument(
        "--no-chunked-prefill",
        action="store_true",
        help="CPU: use the separate prefill stage instead of prefilling prompts in chunks "
        "inside the decode steps (chunked prefill needs the native CPU kernels)",
    )
    m.add_argument(
        "--max-step-tokens",
        type=positive_int,
        default=_DEFAULT.max_step_tokens,
        help="chunked prefill: token rows per step, decode rows + prompt chunks (default %(default)s)",
    )
    m.add_argument("--ici-fsdp-parallelism", type=_parallelism, default=_DEFAULT.ici_fsdp_parallelism)
    m.add_argument(
        "--ici-autoregressive-parallelism", type=_parallelism, default=_DEFAULT.ici_autoregressive_parallelism
    )
    m.add_argument(
        "--ici-tensor-parallelism",
        type=_parallelism,
        default=_DEFAULT.ici_tensor_parallelism,
        help="mesh axes fsdp x autoregressive x tensor; -1 fills the remaining devices",
    )


def settings_from_args(args: argparse.Namespace) -> EngineSettings:
    """Flags (from `add_engine_arguments`) -> `EngineSettings`; a `SettingsError` names the flag.

    Flags a command left out (`serving=False`) keep their `EngineSettings` defaults.
    """
    if args.model_path is None:
        if args.model is not None and args.model not in CATALOG:
            raise SettingsError(
                f"--model {args.model!r} is not in the catalog ({', '.join(sorted(CATALOG))}); "
                "pass --model-path for any other checkpoint"
            )
        if args.tokenizer_path is not None:
            raise SettingsError(
                "--tokenizer-path goes with a MaxText --model-path; the catalog model carries its tokenizer"
            )
    elif args.model is not None and args.model not in ARCHITECTURES:
        raise SettingsError(
            f"--model {args.model!r} with --model-path must name a MaxText checkpoint's architecture "
            f"({', '.join(sorted(ARCHITECTURES))}); leave --model out for GGUF and Hugging Face "
            "checkpoints, which carry their own"
        )
    settings = EngineSettings(
        model=args.model if args.model_path else (args.model or DEFAULT_MODEL),
        model_path=args.model_path,
        tokenizer_path=args.tokenizer_path,
        weight_dtype=args.weight_dtype,
        kv_dtype=args.kv_dtype,
        compilation_cache_dir=args.compilation_cache_dir or None,
    )
    if settings.weight_dtype == "gguf" and settings.model_path and not settings.model_path.endswith(".gguf"):
        raise SettingsError(
            f"--weight-dtype gguf keeps a GGUF file's weights as stored, but --model-path "
            f"{settings.model_path!r} is not a .gguf file; pass q4_0, q4_1 or q8_0 to quantize it at load"
        )
    if not hasattr(args, "max_slots"):  # added with serving=False
        return settings
    settings = dataclasses.replace(
        settings,
        chunked_prefill=not args.no_chunked_prefill,
        prefix_caching=not args.no_prefix_caching,
        **{name: getattr(args, name) for name in _SERVING_FIELDS},
    )
    if (
        settings.max_prefill_length is not None
        and settings.max_target_length is not None
        and settings.max_prefill_length >= settings.max_target_length
    ):
        raise SettingsError(
            f"--max-prefill-length ({settings.max_prefill_length}) must be smaller than "
            f"--max-target-length ({settings.max_target_length}) to leave room for generated tokens."
        )
    return settings
