"""How an engine runs where it runs: every platform-dependent choice, derived once.

`JaxEngine.__init__` calls `derive_policy` with the settings, the platform and the size of the
generate mesh, and then only reads the frozen `EnginePolicy` it gets back. The choices interact
(chunked prefill needs the attention kernel, which needs the native kernels and a float32 cache;
YNNPACK dots change which decode rows are worth computing), so they are made together here,
where a reader sees all of them and `tests/inference_app/engine/test_policy.py` checks them as a
table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp

from inference_app.engine.api import EngineSettings
from inference_app.engine.settings import WeightDtype
from inference_app.kernels.ops import NATIVE_CPU, PURE_JAX, KernelChoice
from inference_app.model.paged_attention import AttentionKernel
from inference_app.model.weights import MatrixFormat

# XLA:CPU compiler options for int8-weight engines. YNNPACK dot fusions run the int8-weight
# matrix-vector products (which XLA's own loop emitter handles at only the fp32 rate) through
# XNNPACK's YNN kernels; fp32 runs as fast without them and keeps row-bucketed decode steps.
# Passed per jit (not via XLA_FLAGS), so they apply regardless of when jax was imported and form
# part of the compilation-cache key.
CPU_COMPILER_OPTIONS: dict[str, str] = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


def native_kernels(
    settings: EngineSettings, platform: str, generate_devices: int, kernels_built: Callable[[], bool]
) -> bool:
    """Whether the native CPU kernels run the matmuls: one CPU device (they know nothing of
    sharding) and the library built. `kernels_built` is called only when the rest allows them."""
    return settings.cpu_kernels and platform == "cpu" and generate_devices == 1 and kernels_built()


def resolve_weight_dtype(
    settings: EngineSettings,
    platform: str,
    checkpoint: str,
    generate_devices: int,
    kernels_built: Callable[[], bool],
) -> WeightDtype:
    """What `--weight-dtype auto` stands for with this checkpoint here; other values stay.

    A GGUF file on one CPU device with the native kernels keeps its matrices as stored (`gguf`):
    what llama.cpp runs, 5-6 bits a weight instead of float32's 32, so a decode step streams a
    sixth of the bytes (quality and speed: docs/model.md#weight-formats). Anything else keeps
    `auto` (float32 on CPU, bfloat16 on TPU/GPU): without the kernels, blocks would be expanded
    to float on every step.
    """
    if settings.weight_dtype != "auto" or checkpoint != "gguf":
        return settings.weight_dtype
    return "gguf" if native_kernels(settings, platform, generate_devices, kernels_built) else "auto"


def resolve_dtypes(settings: EngineSettings, platform: str) -> tuple[Any, Any, MatrixFormat]:
    """(compute dtype, KV dtype, matrix format) for a platform; `auto` is fp32 on CPU, bf16
    elsewhere, with float matrices (`resolve_weight_dtype` first makes `auto` concrete where the
    checkpoint's own format is the better choice).

    An `auto` KV cache follows the compute dtype, except on CPU where it stays float32: the CPU
    attention kernel reads float32, and a bf16 cache would save memory, not time.
    """
    auto = jnp.float32 if platform == "cpu" else jnp.bfloat16
    w = settings.weight_dtype
    floats = w in ("float32", "bfloat16")
    compute = jnp.dtype(w).type if floats else auto
    kv_auto = jnp.float32 if platform == "cpu" else compute
    kv = kv_auto if settings.kv_dtype == "auto" else jnp.dtype(settings.kv_dtype).type
    matrices: MatrixFormat = "float" if floats or w == "auto" else w  # type: ignore[assignment]
    return compute, kv, matrices


@dataclass(frozen=True)
class EnginePolicy:
    """The engine's platform-dependent choices (see `derive_policy` for the rules)."""

    compute_dtype: Any  # activations and float weights
    kv_dtype: Any
    matrices: MatrixFormat  # float, weight-only int8 (`QInt8`) or block-quantized (`BlockQuant`)
    # Native CPU kernels for the matmuls of a few rows and for greedy argmax: one CPU device
    # only (they know nothing of sharding), float activations, library built.
    kernels: KernelChoice
    # The ragged CPU attention kernel reads each slot in place up to its own position, so one
    # attention length serves every step; it reads a float32 cache. Otherwise decode attention
    # is pure JAX over a bucketed prefix of the cache.
    kernel_attention: bool
    # int8 weights on CPU compile with YNNPACK dot fusions (`CPU_COMPILER_OPTIONS`).
    ynn_dots: bool
    # YNNPACK dots first copy a sliced cache, so without the attention kernel every decode step
    # keeps all rows (measured, 32-slot cache, 1 active: 164 ms/step sliced vs 105 ms full).
    full_width_steps: bool
    # Prompts prefill in chunks inside the decode steps, instead of a separate padded prefill
    # stage; needs both stages on one device group and a paged attention kernel.
    chunked_prefill: bool
    # The kernel that reads the paged KV cache (`model/paged_attention.py`) when prompts prefill
    # in chunks: "cpu" (the native kernel, a float32 cache on one CPU device); "pallas_tpu" (JAX's
    # ragged paged attention) is the TPU kernel for it. None: a slot cache, prompts prefilled
    # separately and inserted (TPU/GPU, sharded meshes, int8 KV, disaggregated serving).
    paged_kernel: AttentionKernel | None

    @property
    def compiler_options(self) -> dict[str, str]:
        return dict(CPU_COMPILER_OPTIONS) if self.ynn_dots else {}


def derive_policy(
    settings: EngineSettings, platform: str, generate_devices: int, kernels_built: Callable[[], bool]
) -> EnginePolicy:
    """The policy for `settings` on `generate_devices` devices of `platform` ("cpu", "tpu", ...).

    `kernels_built` (normally `kernels.build.available`, which may compile the library) is
    called only when everything else allows the native kernels.
    """
    compute, kv, matrices = resolve_dtypes(settings, platform)
    cpu = platform == "cpu"
    native = jnp.dtype(compute) in (jnp.float32, jnp.bfloat16) and native_kernels(
        settings, platform, generate_devices, kernels_built
    )
    kernel_attention = native and jnp.dtype(kv) == jnp.float32
    ynn_dots = cpu and matrices == "int8"
    # The Pallas TPU kernel ("pallas_tpu") reads the same paged cache through the same seam and is
    # checked against the CPU path in TPU interpret mode, but no engine has run on a TPU with it
    # yet: TPU keeps the slot cache and separate prefill until one has (docs/model.md).
    paged: AttentionKernel | None = None
    if settings.chunked_prefill and settings.mode == "interleaved" and kernel_attention:
        paged = "cpu"
    return EnginePolicy(
        compute_dtype=compute,
        kv_dtype=kv,
        matrices=matrices,
        kernels=NATIVE_CPU if native else PURE_JAX,
        kernel_attention=kernel_attention,
        ynn_dots=ynn_dots,
        full_width_steps=ynn_dots and not native,
        chunked_prefill=paged is not None,
        paged_kernel=paged,
    )
