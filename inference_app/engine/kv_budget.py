"""How large the paged KV cache is, and how many sequences and tokens it serves, from memory.

Where it sits: the engine sizes its cache once at start-up, after the weights are placed, from
the free memory of whatever holds the cache (host RAM on CPU: `host_free_bytes`; the device's
memory on TPU/GPU: `device_free_bytes`) and what one cached token costs (all layers' K and V,
layout padding included). Nothing is sized per slot any more: slots only bound how many sequences
decode together, and admission is bounded by free blocks (`block_tables.KVBlockManager`).

    cache bytes  --kv-cache-memory; else, when both --max-slots and --max-target-length are
                 given, what lets every slot hold a full context; else, on CPU, what the work a
                 few cores can decode needs: one full context or every slot holding a chat turn
                 and as much again for cached prefixes (`CPU_SLOT_TOKENS`), whichever is more
                 (SmolLM2: 256 blocks, 1440 MiB), at most a quarter of free memory (the host
                 also runs the server and other programs); a bigger cache only keeps more
                 prefixes, since the cores cannot decode more sequences at once. Accelerators:
                 0.85 of free memory, leaving room for activations and compiled programs
    blocks       cache bytes // (block size x bytes per token)
    context      the model's own context (8192 for SmolLM2), unless the cache holds fewer
                 tokens; --max-target-length overrides it
    slots        64 on CPU (more decode rows per step only lengthen every stream's steps on a
                 few cores), 256 on accelerators; never more than the blocks; --max-slots
                 overrides it

`engine_limits` turns that into the engine's limits. A paged cache (chunked prefill) shares its
blocks among all slots; a slot cache (separate prefill: sharded meshes, int8 KV, disaggregated
serving) reserves a full context per slot, so there the same memory gives fewer slots.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CPU_MEMORY_FRACTION = 0.25
# Tokens the default CPU cache holds per default slot: a chat turn (a ~160-token prompt and its
# reply fit in two 128-token blocks) for the running request, and as much again for the prefix
# cache, so that recent prompts stay cached while every slot is busy (with exactly what the slots
# use, 64 busy slots evicted every cached prompt: TTFT p50 at 64 concurrent 1.16 s, 0.57 s with
# the room).
CPU_SLOT_TOKENS = 512
ACCELERATOR_MEMORY_FRACTION = 0.85
DEFAULT_MAX_SLOTS = {"cpu": 64}
ACCELERATOR_MAX_SLOTS = 256


@dataclass(frozen=True)
class KVBudget:
    num_blocks: int
    block_size: int
    max_slots: int
    max_context: int  # tokens one sequence may hold (prompt + generated)
    bytes_per_token: int  # all layers' K and V for one token

    @property
    def cache_bytes(self) -> int:
        return self.num_blocks * self.block_size * self.bytes_per_token

    @property
    def tokens(self) -> int:
        return self.num_blocks * self.block_size


def size_kv_cache(
    *,
    platform: str,
    free_bytes: int,
    bytes_per_token: int,
    block_size: int,
    model_context: int,
    cache_bytes: int | None = None,
    max_slots: int | None = None,
    max_context: int | None = None,
) -> KVBudget:
    """The cache for `platform` given its free memory; explicit values (the serve flags) win.

    Raises ValueError naming the flag to change when the memory cannot hold one sequence of the
    requested context.
    """
    if bytes_per_token < 1 or block_size < 1 or model_context < 1:
        raise ValueError("bytes_per_token, block_size and model_context must be >= 1")
    fraction = CPU_MEMORY_FRACTION if platform == "cpu" else ACCELERATOR_MEMORY_FRACTION
    if cache_bytes is not None:
        budget = cache_bytes
    elif max_slots is not None and max_context is not None:
        budget = max_slots * -(-max_context // block_size) * block_size * bytes_per_token
    else:
        budget = int(free_bytes * fraction)
        if platform == "cpu":
            need = _cpu_tokens(block_size, model_context, max_slots, max_context)
            budget = min(budget, need * bytes_per_token)
    blocks = budget // (block_size * bytes_per_token)
    tokens = blocks * block_size
    context = max_context if max_context is not None else min(model_context, tokens)
    where = (
        "--kv-cache-memory"
        if cache_bytes is not None
        else f"{fraction:.0%} of {free_bytes / 2**30:.1f} GiB free"
    )
    if blocks < 1 or context < 2 or tokens < context:
        need = max(context, 2 * block_size) * bytes_per_token
        raise ValueError(
            f"the KV cache ({budget / 2**20:.0f} MiB: {where}) holds {tokens} tokens, fewer than one "
            f"sequence of {context} tokens needs ({need / 2**20:.0f} MiB at {bytes_per_token} bytes per "
            "token): raise --kv-cache-memory or lower --max-target-length"
        )
    slots = (
        max_slots
        if max_slots is not None
        else min(DEFAULT_MAX_SLOTS.get(platform, ACCELERATOR_MAX_SLOTS), blocks)
    )
    return KVBudget(blocks, block_size, slots, context, bytes_per_token)


def _cpu_tokens(block_size: int, model_context: int, max_slots: int | None, max_context: int | None) -> int:
    """Tokens of the default CPU cache: one full context, or every slot's chat turn, in blocks."""
    slots = max_slots if max_slots is not None else DEFAULT_MAX_SLOTS["cpu"]
    context = max_context if max_context is not None else model_context
    blocks = max(-(-context // block_size), slots * -(-CPU_SLOT_TOKENS // block_size))
    return blocks * block_size


def host_free_bytes(meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """Memory this process may still take: the kernel's MemAvailable, capped by the room left
    under a cgroup (v2) limit, as in a container with a memory limit."""
    free: int | None = None
    if meminfo.exists():
        m = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo.read_text(), re.MULTILINE)
        if m:
            free = int(m.group(1)) * 1024
    if free is None:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limit, current = cgroup / "memory.max", cgroup / "memory.current"
    if limit.exists() and current.exists():
        text = limit.read_text().strip()
        if text != "max":
            free = min(free, int(text) - int(current.read_text().strip()))
    return max(free, 0)


def device_free_bytes(device: Any) -> int | None:
    """Free memory of an accelerator (bytes_limit - bytes_in_use), None where it does not say."""
    stats = device.memory_stats()  # None on CPU
    if not stats or "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'4GiB', '512MiB', '1.5G', '1000000' -> bytes (K/M/G/T are powers of 1024, as in GiB)."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a memory size: {text!r} (examples: 4GiB, 512MiB, 1.5G, 1000000)")
    value, unit = float(m.group(1)), m.group(2).lower()
    return int(value * 1024 ** " kmgt".index(unit or " "))


# The separate prefill stage compiles one program per power-of-two prompt bucket up to the longest
# prompt, so without chunked prefill the default prompt limit stays short.
SLOT_CACHE_PREFILL_LIMIT = 512


@dataclass(frozen=True)
class EngineLimits:
    max_slots: int
    max_prefill_length: int  # longest prompt
    max_target_length: int  # prompt + generated tokens of one sequence
    budget: KVBudget


def engine_limits(
    *,
    paged: bool,
    platform: str,
    free_bytes: int,
    bytes_per_token: int,
    block_size: int,
    model_context: int,
    cache_bytes: int | None = None,
    max_slots: int | None = None,
    max_target_length: int | None = None,
    max_prefill_length: int | None = None,
) -> EngineLimits:
    """Slots, prompt and sequence limits and the cache size for an engine (None: sized here).

    A slot cache holds `max_slots` x `max_target_length` tokens: given one, the other follows
    from the memory. Raises ValueError naming the flag to change.
    """
    budget = size_kv_cache(
        platform=platform,
        free_bytes=free_bytes,
        bytes_per_token=bytes_per_token,
        block_size=block_size,
        model_context=model_context,
        cache_bytes=cache_bytes,
        max_slots=max_slots,
        max_context=max_target_length,
    )
    context, slots = budget.max_context, budget.max_slots
    if not paged:
        if max_slots is None:
            slots = max(1, min(slots, budget.tokens // context))
        elif max_target_length is None:
            context = min(context, budget.tokens // slots)
        if slots * context > budget.tokens:
            raise ValueError(
                f"a slot cache of {slots} slots x {context} tokens needs "
                f"{slots * context * bytes_per_token / 2**20:.0f} MiB, more than the "
                f"{budget.cache_bytes / 2**20:.0f} MiB of the KV cache: raise --kv-cache-memory or "
                "lower --max-slots or --max-target-length"
            )
    if context < 2:
        raise ValueError(f"sequences of {context} tokens leave no room to generate: raise --kv-cache-memory")
    default_prefill = context - 1 if paged else min(SLOT_CACHE_PREFILL_LIMIT, context - 1)
    prefill = default_prefill if max_prefill_length is None else max_prefill_length
    if prefill >= context:
        raise ValueError(
            f"--max-prefill-length ({prefill}) must be smaller than --max-target-length ({context}) "
            "to leave room for generated tokens."
        )
    return EngineLimits(
        slots, prefill, context, dataclasses.replace(budget, max_slots=slots, max_context=context)
    )
