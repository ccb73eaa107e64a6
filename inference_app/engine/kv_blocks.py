"""The pool of KV blocks a paged cache is cut into: reference counts, LRU reuse, prefix hits.

Where it sits: `block_tables.KVBlockManager` takes blocks from this pool as a sequence's tokens
arrive and gives them back when its request ends; the model reads and writes the blocks by id
(`model/paged_attention.py`). A block is in one of three states:

    in use   refcount > 0 (one reference per sequence whose table lists it); never reused
    cached   refcount 0 and a prefix-cache key: reusable by a prefix hit until it is evicted
    free     refcount 0, no key

Cached and free blocks wait on one queue in the order they were released. `allocate` takes the
oldest (least recently used) and drops its key if it had one, so the cache keeps the blocks used
most recently and never holds memory a new sequence needs (vLLM's automatic prefix caching works
the same way). A prefix hit (`take_cached`) pulls a block off the queue wherever it is.

Beside its key, a block a prompt wrote may carry a **tail**: the prefix key of the blocks before
it and the prompt tokens it holds (a full block's, or the fewer of a prompt's last block). A
later prompt that shares only the first tokens of that block cannot share the block (it writes
the rest), but it can start from a copy of it (`best_tail`): a prompt repeated or extended
mid-block computes only what is new, not the whole last block. A tail is dropped when its block
is allocated again, as a key is.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from inference_app.engine.prefix_cache import BlockHash

# Tails kept per prefix key (the newest): a system prompt shared by many conversations has one
# tail per conversation under its last full block; looking them all up would cost more than the
# hit saves.
MAX_TAILS_PER_PREFIX = 32


class OutOfBlocks(RuntimeError):
    """Every block is in use: the caller admitted more than the pool holds."""


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"a KV block pool needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self._refs = [0] * num_blocks
        self._key: list[BlockHash | None] = [None] * num_blocks
        self._by_key: dict[BlockHash, int] = {}
        # refcount-0 blocks, oldest release first (dict order; O(1) removal from the middle)
        self._queue: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self._tail: list[tuple[BlockHash, np.ndarray] | None] = [None] * num_blocks
        self._tails: dict[BlockHash, OrderedDict[int, None]] = {}  # prefix key -> blocks, oldest first

    @property
    def num_free(self) -> int:
        """Blocks not in use (free or cached): what `allocate` can still hand out."""
        return len(self._queue)

    @property
    def num_cached(self) -> int:
        """Blocks holding a prefix-cache key (in use or not)."""
        return len(self._by_key)

    def refcount(self, block: int) -> int:
        return self._refs[block]

    def key(self, block: int) -> BlockHash | None:
        return self._key[block]

    def allocate(self) -> int:
        """A block for new K/V: the least recently released one, its old key evicted."""
        if not self._queue:
            raise OutOfBlocks(f"all {self.num_blocks} KV blocks are in use")
        block, _ = self._queue.popitem(last=False)
        self._evict(block)
        self._refs[block] = 1
        return block

    def lookup(self, key: BlockHash) -> int | None:
        """The block holding K/V for `key`, if it is still cached."""
        return self._by_key.get(key)

    def take_cached(self, block: int) -> None:
        """Add a reference to a block found by `lookup` (a prefix hit)."""
        if self._key[block] is None:
            raise ValueError(f"block {block} holds no cached prefix")
        if self._refs[block] == 0:
            del self._queue[block]
        self._refs[block] += 1

    def release(self, block: int) -> None:
        """Drop one reference; at zero the block joins the back of the reuse queue, keeping its key."""
        if self._refs[block] <= 0:
            raise ValueError(f"block {block} is not in use")
        self._refs[block] -= 1
        if self._refs[block] == 0:
            self._queue[block] = None

    def register(self, block: int, key: BlockHash) -> bool:
        """Record that `block` (in use, fully written) holds the K/V for `key`.

        False when another block already holds that key (two sequences computed the same prefix
        at once): this block then stays unkeyed and is plainly freed on release.
        """
        if self._refs[block] <= 0:
            raise ValueError(f"block {block} is not in use")
        if self._key[block] is not None:
            return self._key[block] == key
        if key in self._by_key:
            return False
        self._key[block] = key
        self._by_key[key] = block
        return True

    def register_tail(self, block: int, prefix: BlockHash, tokens: np.ndarray) -> None:
        """Record that `block` (in use) holds the K/V of `tokens` at its first offsets, following
        the prefix whose last full block has key `prefix` (b"" for none)."""
        if self._refs[block] <= 0:
            raise ValueError(f"block {block} is not in use")
        self._drop_tail(block)
        self._tail[block] = (prefix, np.array(tokens, np.int32))
        tails = self._tails.setdefault(prefix, OrderedDict())
        tails[block] = None
        if len(tails) > MAX_TAILS_PER_PREFIX:
            self._drop_tail(next(iter(tails)))

    def best_tail(self, prefix: BlockHash, tokens: np.ndarray) -> tuple[int, int]:
        """(block, n): the block whose tail after `prefix` shares the longest start with `tokens`,
        and how many tokens it shares (n = 0: none)."""
        best, most = -1, 0
        for block in reversed(self._tails.get(prefix, ())):  # newest first: ties go to it
            tail = self._tail[block]
            assert tail is not None
            held = tail[1]
            n = min(len(held), len(tokens))
            differ = np.flatnonzero(held[:n] != tokens[:n])
            shared = int(differ[0]) if len(differ) else n
            if shared > most:
                best, most = block, shared
        return best, most

    def _drop_tail(self, block: int) -> None:
        tail = self._tail[block]
        if tail is not None:
            tails = self._tails[tail[0]]
            del tails[block]
            if not tails:
                del self._tails[tail[0]]
            self._tail[block] = None

    def _evict(self, block: int) -> None:
        key = self._key[block]
        if key is not None:
            del self._by_key[key]
            self._key[block] = None
        self._drop_tail(block)
