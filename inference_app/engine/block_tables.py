"""Per-sequence block tables over a `BlockPool`: admission by blocks, growth, prefix hits.

Where it sits: the engine keeps one `KVBlockManager`. Before a request takes a slot, `can_admit`
says whether the pool can hold it; `admit` gives it its table, reusing the cached blocks of its
longest known prefix (those tokens are not computed again) and returns how many prompt tokens
that covers; `grow` takes blocks as the sequence's tokens reach them; `written` registers full
prompt blocks for later requests once their K/V is in the cache; `release` gives everything back.
`tables` ([max_slots, max_blocks] int32, -1 where unassigned) is what the model reads.

Admission reserves every block the request could need (prompt + max_new_tokens), so a running
sequence never finds the pool empty and nothing has to be preempted; a request that ends early
(EOS, a stop string, a cancel) never takes the rest of its reservation. Reserving the worst case
costs concurrency only when many requests ask for far more tokens than they use.

At least the last prompt token is always computed (its logits give the first generated token), so
a hit covers at most the full blocks before it, and a sequence only ever writes its own blocks:
shared (cached) blocks are full and read-only.

Past its full-block hits, a prompt may share the start of a block another prompt wrote (the same
prompt again, whose last block is never full; or a longer one): it cannot share that block, but
its own block starts as a copy of it (`copies`, which the engine applies before its next step),
and its prefill starts after the shared tokens. A prompt repeated costs its last token, not the
whole of its last block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from inference_app.engine.kv_blocks import BlockPool, OutOfBlocks
from inference_app.engine.prefix_cache import BlockHash, block_hashes

UNASSIGNED = -1
ROOT: BlockHash = b""  # the prefix key before a sequence's first block
# Fewer shared tokens than this in a partial block are computed rather than copied (a copy moves
# the whole block; computing a few rows costs about as much).
MIN_TAIL_TOKENS = 8


@dataclass
class _Sequence:
    capacity: int  # tokens it may hold: prompt + max new tokens
    reserved: int  # blocks counted against the pool, not taken yet
    keys: list[BlockHash]  # prefix-cache keys of its full prompt blocks
    registered: int  # leading blocks of `keys` known to the pool (hits count)
    shared: int  # leading blocks taken by reference (prefix hits)
    prompt: np.ndarray | None  # its prompt (None: unknown, or no prefix caching)
    blocks: list[int] = field(default_factory=list)
    tails_registered: bool = False


@dataclass(frozen=True)
class PrefixStats:
    queried_tokens: int  # prompt tokens looked up in the prefix cache
    hit_tokens: int  # of those, found cached (not computed)


class KVBlockManager:
    def __init__(
        self,
        pool: BlockPool,
        block_size: int,
        max_slots: int,
        max_context: int,
        prefix_caching: bool = True,
        min_tail_tokens: int = MIN_TAIL_TOKENS,
    ) -> None:
        if block_size < 1 or max_slots < 1 or max_context < 1:
            raise ValueError(
                "block_size, max_slots and max_context must be >= 1, "
                f"got {block_size}, {max_slots}, {max_context}"
            )
        self.pool = pool
        self.block_size = block_size
        self.max_context = max_context
        self.prefix_caching = prefix_caching
        self.min_tail_tokens = max(1, min_tail_tokens)
        self.max_blocks = -(-max_context // block_size)
        self.tables = np.full((max_slots, self.max_blocks), UNASSIGNED, np.int32)
        self._seqs: dict[int, _Sequence] = {}
        self._reserved = 0
        self._queried = 0
        self._hits = 0
        self._copies: list[tuple[int, int]] = []

    # ---- queries ----------------------------------------------------------------------------

    @property
    def available_blocks(self) -> int:
        """Blocks a new request may still claim: free or cached, minus outstanding reservations."""
        return self.pool.num_free - self._reserved

    @property
    def prefix_stats(self) -> PrefixStats:
        return PrefixStats(self._queried, self._hits)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def length(self, slot: int) -> int:
        """Tokens the slot's blocks can hold now."""
        return len(self._seqs[slot].blocks) * self.block_size

    def can_admit(self, prompt_ids: Sequence[int] | np.ndarray, max_new_tokens: int) -> bool:
        return self._cost(prompt_ids, max_new_tokens)[1] <= self.available_blocks

    # ---- changes ----------------------------------------------------------------------------

    def admit(self, slot: int, prompt_ids: Sequence[int] | np.ndarray, max_new_tokens: int) -> int:
        """Give `slot` a table for this request; return how many leading prompt tokens are cached.

        The cached tokens' blocks are already in the table (a partly shared block as this
        sequence's own block, with its copy in `copies`); nothing else is taken yet.
        """
        self._check_new(slot, len(prompt_ids), max_new_tokens)
        (keys, hits), cost = self._cost(prompt_ids, max_new_tokens)
        prompt = np.asarray(prompt_ids, np.int32) if self.prefix_caching else None
        tail = self._tail(prompt, keys, len(hits)) if prompt is not None else None
        cached = self._admit(slot, len(prompt_ids), max_new_tokens, keys, hits, cost, prompt)
        if tail is not None:
            src, shared = tail
            self.grow(slot, cached + 1)
            dst = self._seqs[slot].blocks[-1]
            if dst != src:  # else the copy's source was the oldest free block: it is still intact
                self._copies.append((src, dst))
            cached += shared
            self._hits += shared
        return cached

    def take_copies(self) -> list[tuple[int, int]]:
        """Block copies (source, destination) admission asked for since the last call, in order:
        the engine applies them before any later step writes a block."""
        copies, self._copies = self._copies, []
        return copies

    def admit_unknown(self, slot: int, prompt_tokens: int, max_new_tokens: int) -> None:
        """Give `slot` a table for a prompt whose tokens are not known here (prefilled elsewhere
        and inserted): no prefix hits, and its blocks are never offered to later requests."""
        self._check_new(slot, prompt_tokens, max_new_tokens)
        self._admit(
            slot, prompt_tokens, max_new_tokens, [], [], self.blocks_for(prompt_tokens + max_new_tokens), None
        )

    def _check_new(self, slot: int, prompt_tokens: int, max_new_tokens: int) -> None:
        if slot in self._seqs:
            raise ValueError(f"slot {slot} already holds a sequence; release it first")
        if not 0 <= slot < self.tables.shape[0]:
            raise ValueError(f"slot {slot} out of range [0, {self.tables.shape[0]})")
        if prompt_tokens < 1 or max_new_tokens < 1 or prompt_tokens + max_new_tokens > self.max_context:
            raise ValueError(
                f"a sequence of {prompt_tokens} prompt + {max_new_tokens} new tokens does not fit "
                f"the context of {self.max_context} tokens"
            )

    def _admit(
        self,
        slot: int,
        prompt_tokens: int,
        max_new_tokens: int,
        keys: list[BlockHash],
        hits: list[int],
        cost: int,
        prompt: np.ndarray | None,
    ) -> int:
        capacity = prompt_tokens + max_new_tokens
        if cost > self.available_blocks:
            raise OutOfBlocks(
                f"the request needs {cost} KV blocks and only {self.available_blocks} are available"
            )
        for block in hits:
            self.pool.take_cached(block)
        reserve = self.blocks_for(capacity) - len(hits)
        self._seqs[slot] = _Sequence(capacity, reserve, keys, len(hits), len(hits), prompt, list(hits))
        self._reserved += reserve
        self.tables[slot, : len(hits)] = hits
        cached = len(hits) * self.block_size
        if keys:
            self._queried += prompt_tokens
            self._hits += cached
        return cached

    def grow(self, slot: int, tokens: int) -> None:
        """Make the slot's blocks cover its first `tokens` tokens (taken from its reservation)."""
        seq = self._seqs[slot]
        if tokens > seq.capacity:
            raise ValueError(f"slot {slot} may hold {seq.capacity} tokens, asked for {tokens}")
        while len(seq.blocks) * self.block_size < tokens:
            block = self.pool.allocate()
            self.tables[slot, len(seq.blocks)] = block
            seq.blocks.append(block)
            seq.reserved -= 1
            self._reserved -= 1

    def written(self, slot: int, tokens: int) -> None:
        """The slot's first `tokens` tokens have their K/V in the cache: register its full prompt
        blocks among them as a prefix for later requests, and once the whole prompt is written,
        the tails of the prompt blocks it computed."""
        if not self.prefix_caching:
            return
        seq = self._seqs[slot]
        full = min(tokens // self.block_size, len(seq.keys), len(seq.blocks))
        for i in range(seq.registered, full):
            self.pool.register(seq.blocks[i], seq.keys[i])
        seq.registered = max(seq.registered, full)
        prompt = seq.prompt
        if prompt is None or seq.tails_registered or tokens < len(prompt):
            return
        seq.tails_registered = True
        bs = self.block_size
        for i in range(seq.shared, min(self.blocks_for(len(prompt)), len(seq.blocks))):
            prefix = seq.keys[i - 1] if i else ROOT
            self.pool.register_tail(seq.blocks[i], prefix, prompt[i * bs : (i + 1) * bs])

    def release(self, slot: int) -> None:
        """Return the slot's blocks (last first, so a shared prefix outlives its tails in the LRU)
        and its unused reservation."""
        seq = self._seqs.pop(slot, None)
        if seq is None:
            return
        for block in reversed(seq.blocks):
            self.pool.release(block)
        self._reserved -= seq.reserved
        self.tables[slot] = UNASSIGNED

    # ---- helpers ----------------------------------------------------------------------------

    def _cost(
        self, prompt_ids: Sequence[int] | np.ndarray, max_new_tokens: int
    ) -> tuple[tuple[list[BlockHash], list[int]], int]:
        """(prompt block keys, cached blocks of its prefix) and the blocks admission takes from
        the pool: its reservation plus the hits that are not in use (they leave the free queue).
        A partly shared block adds nothing: its copy lands in a block of the reservation, and the
        copy's source is not taken (it is read before any later step can write it)."""
        keys: list[BlockHash] = []
        hits: list[int] = []
        if self.prefix_caching:
            keys = block_hashes(prompt_ids, self.block_size)
            for key in keys[: (len(prompt_ids) - 1) // self.block_size]:
                block = self.pool.lookup(key)
                if block is None:
                    break
                hits.append(block)
        need = self.blocks_for(len(prompt_ids) + max_new_tokens) - len(hits)
        idle_hits = sum(self.pool.refcount(b) == 0 for b in hits)
        return (keys, hits), need + idle_hits

    def _tail(self, prompt: np.ndarray, keys: list[BlockHash], hits: int) -> tuple[int, int] | None:
        """(block, tokens): the cached block whose start the prompt's next block shares, past
        its `hits` full blocks (up to, not including, the last prompt token), if enough is shared."""
        start = hits * self.block_size
        rest = prompt[start : min(start + self.block_size, len(prompt) - 1)]
        if len(rest) < self.min_tail_tokens:
            return None
        src, shared = self.pool.best_tail(keys[hits - 1] if hits else ROOT, rest)
        return (src, shared) if shared >= self.min_tail_tokens else None
