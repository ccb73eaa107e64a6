"""Prefix-cache keys: when two sequences' KV blocks are interchangeable.

Where it sits: `block_tables.KVBlockManager` hashes each request's full prompt blocks with
`block_hashes` when it admits the request, looks the hashes up in the `kv_blocks.BlockPool` (a hit
means the block's K/V is already in the cache and the engine skips computing it), and registers
them once the engine has written those blocks.

The K/V of token t depends on tokens 0..t, so a block's key chains the key of the block before
it: two blocks match only when their whole prefixes match. The digest is 128-bit BLAKE2b, so a
false match (which would silently serve another prompt's K/V) is out of reach, unlike a 64-bit
`hash()`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

BlockHash = bytes


def block_hashes(
    ids: Sequence[int] | np.ndarray, block_size: int, count: int | None = None
) -> list[BlockHash]:
    """Chained keys of the first `count` full blocks of `ids` (default: every full block)."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    tokens = np.asarray(ids, dtype=np.int32)
    full = len(tokens) // block_size
    n = full if count is None else min(count, full)
    out: list[BlockHash] = []
    parent = b""
    for i in range(n):
        h = hashlib.blake2b(parent, digest_size=16)
        h.update(tokens[i * block_size : (i + 1) * block_size].tobytes())
        parent = h.digest()
        out.append(parent)
    return out
