"""The engine's platform policy as a table: settings x platform x mesh -> the choices it makes."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import pytest

from inference_app.engine.api import EngineSettings
from inference_app.engine.policy import CPU_COMPILER_OPTIONS, derive_policy, resolve_weight_dtype
from inference_app.kernels.ops import NATIVE_CPU, PURE_JAX

BASE = EngineSettings()


def built() -> bool:
    return True


def not_built() -> bool:
    return False


@pytest.mark.parametrize(
    ("changes", "platform", "devices", "kernels_built", "want"),
    [
        # CPU default: native kernels, in-place attention, chunked prefill, no YNNPACK dots
        ({}, "cpu", 1, built, (NATIVE_CPU, True, False, False, True)),
        # no compiler: pure JAX everywhere, separate prefill
        ({}, "cpu", 1, not_built, (PURE_JAX, False, False, False, False)),
        ({"cpu_kernels": False}, "cpu", 1, built, (PURE_JAX, False, False, False, False)),
        # a sharded CPU mesh: the kernels know nothing of sharding
        ({}, "cpu", 8, built, (PURE_JAX, False, False, False, False)),
        # int8 weights: YNNPACK dots; with the kernels row buckets stay, without them full width
        ({"weight_dtype": "int8"}, "cpu", 1, built, (NATIVE_CPU, True, True, False, True)),
        ({"weight_dtype": "int8"}, "cpu", 1, not_built, (PURE_JAX, False, True, True, False)),
        # block-quantized weights: their kernel is part of the native library; no YNNPACK dots
        ({"weight_dtype": "q4_1"}, "cpu", 1, built, (NATIVE_CPU, True, False, False, True)),
        ({"weight_dtype": "gguf"}, "cpu", 1, not_built, (PURE_JAX, False, False, False, False)),
        # an int8 KV cache: the kernels for matmuls, pure-JAX attention, so no chunked prefill
        ({"kv_dtype": "int8"}, "cpu", 1, built, (NATIVE_CPU, False, False, False, False)),
        # chunked prefill switched off, or impossible in disaggregated mode
        ({"chunked_prefill": False}, "cpu", 1, built, (NATIVE_CPU, True, False, False, False)),
        ({"mode": "disaggregated"}, "cpu", 1, built, (NATIVE_CPU, True, False, False, False)),
        # TPU: bf16, pure JAX matmuls, separate prefill into a slot cache (the Pallas paged
        # kernel is checked in interpret mode only, not yet run by an engine on a TPU)
        ({}, "tpu", 1, built, (PURE_JAX, False, False, False, False)),
        ({"kv_dtype": "int8"}, "tpu", 1, built, (PURE_JAX, False, False, False, False)),
        # a sharded TPU mesh: separate prefill into a slot cache
        ({"weight_dtype": "int8"}, "tpu", 4, built, (PURE_JAX, False, False, False, False)),
        # GPU: separate prefill into a slot cache
        ({}, "gpu", 1, built, (PURE_JAX, False, False, False, False)),
    ],
)
def test_policy_table(
    changes: dict[str, object], platform: str, devices: int, kernels_built: object, want: tuple[object, ...]
) -> None:
    settings = dataclasses.replace(BASE, **changes)  # type: ignore[arg-type]
    p = derive_policy(settings, platform, devices, kernels_built)  # type: ignore[arg-type]
    assert (p.kernels, p.kernel_attention, p.ynn_dots, p.full_width_steps, p.chunked_prefill) == want
    # chunked prefill runs over the paged cache, read by the native CPU kernel
    assert p.paged_kernel == ("cpu" if p.chunked_prefill else None)
    assert p.compiler_options == (CPU_COMPILER_OPTIONS if p.ynn_dots else {})


def test_dtypes_follow_the_platform() -> None:
    cpu = derive_policy(BASE, "cpu", 1, built)
    assert (cpu.compute_dtype, cpu.kv_dtype, cpu.matrices) == (jnp.float32, jnp.float32, "float")
    tpu = derive_policy(BASE, "tpu", 1, built)
    assert (tpu.compute_dtype, tpu.kv_dtype) == (jnp.bfloat16, jnp.bfloat16)
    q41 = derive_policy(dataclasses.replace(BASE, weight_dtype="q4_1"), "tpu", 1, built)
    assert (q41.compute_dtype, q41.matrices) == (jnp.bfloat16, "q4_1")
    bf16 = derive_policy(dataclasses.replace(BASE, weight_dtype="bfloat16"), "cpu", 1, built)
    assert (bf16.compute_dtype, bf16.kv_dtype, bf16.kernels) == (jnp.bfloat16, jnp.float32, NATIVE_CPU)


def test_the_kernel_library_is_built_only_when_it_would_be_used() -> None:
    calls: list[int] = []

    def probe() -> bool:
        calls.append(1)
        return True

    derive_policy(BASE, "tpu", 1, probe)
    derive_policy(dataclasses.replace(BASE, cpu_kernels=False), "cpu", 1, probe)
    assert calls == []
    derive_policy(BASE, "cpu", 1, probe)
    assert calls == [1]


def test_policy_is_frozen_and_hashable() -> None:
    p = derive_policy(BASE, "cpu", 1, built)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.chunked_prefill = False  # type: ignore[misc]
    assert hash(p) == hash(derive_policy(BASE, "cpu", 1, built))


@pytest.mark.parametrize(
    ("changes", "checkpoint", "platform", "devices", "kernels_built", "want"),
    [
        # a GGUF file served on one CPU device with the kernels: its matrices as stored
        ({}, "gguf", "cpu", 1, built, "gguf"),
        # no kernels to read the blocks (not built, switched off, a sharded mesh): float
        ({}, "gguf", "cpu", 1, not_built, "auto"),
        ({"cpu_kernels": False}, "gguf", "cpu", 1, built, "auto"),
        ({}, "gguf", "cpu", 8, built, "auto"),
        ({}, "gguf", "tpu", 1, built, "auto"),
        # float checkpoints keep float matrices
        ({}, "hf", "cpu", 1, built, "auto"),
        ({}, "maxtext", "cpu", 1, built, "auto"),
        # an explicit choice is kept
        ({"weight_dtype": "float32"}, "gguf", "cpu", 1, built, "float32"),
        ({"weight_dtype": "int8"}, "gguf", "cpu", 1, built, "int8"),
    ],
)
def test_auto_weights_keep_a_gguf_file_s_blocks_where_the_kernels_read_them(
    changes: dict[str, object],
    checkpoint: str,
    platform: str,
    devices: int,
    kernels_built: object,
    want: str,
) -> None:
    settings = dataclasses.replace(BASE, **changes)  # type: ignore[arg-type]
    assert resolve_weight_dtype(settings, platform, checkpoint, devices, kernels_built) == want  # type: ignore[arg-type]
