"""Sizing the paged KV cache from memory: blocks, slots and context, the overrides, and the
errors that name the flag to change."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_app.engine.kv_budget import (
    CPU_SLOT_TOKENS,
    KVBudget,
    device_free_bytes,
    host_free_bytes,
    parse_size,
    size_kv_cache,
)

GIB = 2**30
SMOLLM2_FP32 = 30 * 2 * 3 * 64 * 4  # layers x (K + V) x KV heads x head size x float32


def cpu_default(free_bytes: int, max_slots: int | None = None, max_context: int | None = None) -> KVBudget:
    return size_kv_cache(
        platform="cpu",
        free_bytes=free_bytes,
        bytes_per_token=SMOLLM2_FP32,
        block_size=128,
        model_context=8192,
        max_slots=max_slots,
        max_context=max_context,
    )


def test_cpu_default_holds_a_chat_turn_per_slot_and_a_full_context() -> None:
    """64 slots x 4 blocks (a 256-token turn each, and as much for cached prefixes) outweigh one
    8192-token context (64 blocks): 256 blocks, 1440 MiB for SmolLM2, whatever the host has beyond
    that."""
    for free in (16 * GIB, 64 * GIB):
        b = cpu_default(free)
        assert (b.num_blocks, b.max_context, b.max_slots) == (256, 8192, 64)
        assert b.tokens == 64 * CPU_SLOT_TOKENS and b.cache_bytes == 1440 * 2**20


def test_cpu_default_with_fewer_slots_still_holds_the_full_context() -> None:
    b = cpu_default(16 * GIB, max_slots=8)
    assert (b.num_blocks, b.max_context, b.max_slots) == (64, 8192, 8)
    b = cpu_default(16 * GIB, max_context=1024)
    assert (b.num_blocks, b.max_context, b.max_slots) == (256, 1024, 64)


def test_cpu_default_takes_at_most_a_quarter_of_free_memory() -> None:
    b = cpu_default(2 * GIB)
    assert b.num_blocks == (GIB // 2) // (128 * SMOLLM2_FP32) == 91
    assert b.max_context == 8192 and b.max_slots == 64


def test_accelerators_use_most_free_memory_and_more_slots() -> None:
    b = size_kv_cache(
        platform="tpu",
        free_bytes=10 * GIB,
        bytes_per_token=2 * 4 * 128 * 2 * 30,
        block_size=128,
        model_context=8192,
    )
    assert b.num_blocks == int(10 * GIB * 0.85) // (128 * 61440) and b.max_slots == 256


def test_a_small_cache_bounds_context_and_slots() -> None:
    b = size_kv_cache(
        platform="tpu",
        free_bytes=0,
        bytes_per_token=1000,
        block_size=16,
        model_context=8192,
        cache_bytes=16 * 1000 * 20,
    )
    assert b.num_blocks == 20 and b.max_context == 320 and b.max_slots == 20


def test_flags_override_the_defaults() -> None:
    b = size_kv_cache(
        platform="cpu",
        free_bytes=GIB,
        bytes_per_token=SMOLLM2_FP32,
        block_size=64,
        model_context=8192,
        cache_bytes=2 * GIB,
        max_slots=8,
        max_context=1024,
    )
    assert (b.num_blocks, b.max_slots, b.max_context) == ((2 * GIB) // (64 * SMOLLM2_FP32), 8, 1024)


def test_explicit_slots_and_context_size_the_cache_for_both() -> None:
    """Given both, every slot can hold a full context (what a slot cache guaranteed), whatever
    the free memory."""
    b = size_kv_cache(
        platform="cpu",
        free_bytes=100 * GIB,
        bytes_per_token=1000,
        block_size=16,
        model_context=8192,
        max_slots=4,
        max_context=100,
    )
    assert (b.num_blocks, b.max_slots, b.max_context) == (4 * 7, 4, 100)


def test_too_little_memory_names_the_flags() -> None:
    with pytest.raises(
        ValueError,
        match=r"holds 256 tokens, fewer than one sequence of 1024.*"
        r"--kv-cache-memory or lower --max-target-length",
    ):
        size_kv_cache(
            platform="cpu",
            free_bytes=GIB,
            bytes_per_token=1000,
            block_size=128,
            model_context=8192,
            cache_bytes=256 * 1000,
            max_context=1024,
        )
    with pytest.raises(ValueError, match=r"25% of 0\.0 GiB free"):
        size_kv_cache(
            platform="cpu", free_bytes=1000, bytes_per_token=1000, block_size=16, model_context=8192
        )


def test_host_free_memory_is_capped_by_the_cgroup(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:  1000 kB\nMemAvailable:   20000000 kB\n")
    cgroup = tmp_path / "cg"
    cgroup.mkdir()
    assert host_free_bytes(meminfo, cgroup) == 20000000 * 1024  # no cgroup files: no limit
    (cgroup / "memory.max").write_text("max\n")
    (cgroup / "memory.current").write_text("5000\n")
    assert host_free_bytes(meminfo, cgroup) == 20000000 * 1024
    (cgroup / "memory.max").write_text(f"{8 * GIB}\n")
    (cgroup / "memory.current").write_text(f"{3 * GIB}\n")
    assert host_free_bytes(meminfo, cgroup) == 5 * GIB
    assert host_free_bytes() > 0  # this machine


def test_device_free_memory() -> None:
    class Device:
        def __init__(self, stats: dict[str, int] | None) -> None:
            self.stats = stats

        def memory_stats(self) -> dict[str, int] | None:
            return self.stats

    assert device_free_bytes(Device({"bytes_limit": 100, "bytes_in_use": 30})) == 70
    assert device_free_bytes(Device(None)) is None
    assert device_free_bytes(Device({"bytes_in_use": 30})) is None


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4GiB", 4 * GIB),
        ("512MiB", 512 * 2**20),
        ("1.5G", int(1.5 * GIB)),
        ("1000000", 1000000),
        ("2 gb", 2 * GIB),
        ("64k", 65536),
    ],
)
def test_sizes_parse(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "4 GiBs", "-1G", "lots", "1e9"])
def test_bad_sizes_are_refused_with_examples(text: str) -> None:
    with pytest.raises(ValueError, match="examples: 4GiB"):
        parse_size(text)
