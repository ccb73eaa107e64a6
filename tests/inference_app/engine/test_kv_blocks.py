"""The paged KV cache's host side: block pool (refcounts, LRU reuse), prefix-cache keys, and the
per-sequence block tables (admission by blocks, reservations, prefix hits, partly shared blocks
copied), and the device program that copies blocks."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from inference_app.engine import steps
from inference_app.engine.block_tables import UNASSIGNED, KVBlockManager
from inference_app.engine.kv_blocks import BlockPool, OutOfBlocks
from inference_app.engine.prefix_cache import block_hashes

# ----- prefix-cache keys -----------------------------------------------------------------------


def test_block_keys_chain_the_whole_prefix() -> None:
    a = block_hashes([1, 2, 3, 4, 5, 6, 7], 2)
    assert len(a) == 3  # full blocks only
    assert block_hashes([1, 2, 3, 4, 9, 9], 2)[:2] == a[:2]
    # the same block of tokens after a different prefix is a different key
    b = block_hashes([0, 0, 3, 4], 2)
    assert b[1] != a[1]
    assert block_hashes([1, 2, 3, 4, 5, 6, 7], 2, count=2) == a[:2]
    assert block_hashes([1, 2, 3], 4) == []
    with pytest.raises(ValueError, match="block_size"):
        block_hashes([1], 0)


def test_block_keys_do_not_depend_on_the_container() -> None:
    ids = list(range(40))
    assert block_hashes(ids, 16) == block_hashes(np.arange(40, dtype=np.int64), 16)


# ----- the pool --------------------------------------------------------------------------------


def test_pool_reuses_the_least_recently_released_block_and_evicts_its_key() -> None:
    pool = BlockPool(3)
    a, b, c = pool.allocate(), pool.allocate(), pool.allocate()
    with pytest.raises(OutOfBlocks):
        pool.allocate()
    assert pool.register(a, b"ka") and pool.register(b, b"kb")
    pool.release(b)
    pool.release(a)  # queue: b (older), a
    assert pool.num_free == 2 and pool.lookup(b"ka") == a
    assert pool.allocate() == b  # oldest first; its key is evicted
    assert pool.lookup(b"kb") is None and pool.lookup(b"ka") == a
    pool.take_cached(a)  # a prefix hit takes a off the queue
    assert pool.refcount(a) == 1 and pool.num_free == 0
    pool.take_cached(a)  # shared by a second sequence
    pool.release(a)
    pool.release(a)
    pool.release(c)
    assert pool.num_free == 2 and pool.lookup(b"ka") == a


def test_pool_keeps_the_first_block_registered_for_a_key() -> None:
    pool = BlockPool(2)
    a, b = pool.allocate(), pool.allocate()
    assert pool.register(a, b"k")
    assert not pool.register(b, b"k")  # computed twice at once: the second stays unkeyed
    assert pool.key(b) is None and pool.lookup(b"k") == a


def test_pool_rejects_misuse() -> None:
    pool = BlockPool(2)
    a = pool.allocate()
    with pytest.raises(ValueError, match="not in use"):
        pool.release(1)
    with pytest.raises(ValueError, match="no cached prefix"):
        pool.take_cached(a)
    pool.release(a)
    with pytest.raises(ValueError, match="not in use"):
        pool.register(a, b"k")
    with pytest.raises(ValueError, match="at least one block"):
        BlockPool(0)


# ----- block tables ----------------------------------------------------------------------------


def manager(blocks: int = 16, block_size: int = 4, slots: int = 4, context: int = 32) -> KVBlockManager:
    return KVBlockManager(BlockPool(blocks), block_size, slots, context)


def test_admission_reserves_the_worst_case_and_growth_takes_blocks_lazily() -> None:
    m = manager(blocks=8)
    assert m.admit(0, list(range(10)), 6) == 0  # 16 tokens: 4 blocks reserved, none taken
    assert m.available_blocks == 4 and m.pool.num_free == 8
    m.grow(0, 10)
    assert m.length(0) == 12 and m.pool.num_free == 5 and m.available_blocks == 4
    assert list(m.tables[0, :3]) == [0, 1, 2] and m.tables[0, 3] == UNASSIGNED
    assert m.can_admit(list(range(100, 110)), 6)
    assert not m.can_admit(list(range(100, 110)), 7)  # 5 blocks > 4 available
    with pytest.raises(OutOfBlocks, match="needs 5 KV blocks and only 4"):
        m.admit(1, list(range(100, 110)), 7)
    with pytest.raises(ValueError, match="may hold 16 tokens"):
        m.grow(0, 17)
    m.release(0)
    assert m.available_blocks == 8 and (m.tables[0] == UNASSIGNED).all()


def test_admission_errors_name_the_problem() -> None:
    m = manager(context=32)
    with pytest.raises(ValueError, match="does not fit the context of 32"):
        m.admit(0, list(range(30)), 3)
    m.admit(0, [1, 2], 1)
    with pytest.raises(ValueError, match="already holds a sequence"):
        m.admit(0, [1, 2], 1)
    with pytest.raises(ValueError, match="out of range"):
        m.admit(9, [1, 2], 1)


def test_a_shared_prefix_is_computed_once() -> None:
    m = manager(blocks=16, block_size=4)
    system = list(range(50, 59))  # 9 tokens: two full blocks and one token
    first = [*system, 1, 2, 3]
    assert m.admit(0, first, 4) == 0
    m.grow(0, len(first))
    m.written(0, 6)  # only the first block is written so far
    second = [*system, 7, 7]
    assert m.admit(1, second, 4) == 4  # the written block is a hit, the unwritten one is not
    m.written(0, len(first))  # now both full system blocks are registered (and block 3 too)
    assert m.admit(2, second, 4) == 8
    assert list(m.tables[2, :2]) == list(m.tables[0, :2])
    assert m.pool.refcount(int(m.tables[0, 0])) == 3
    assert m.prefix_stats.hit_tokens == 12 and m.prefix_stats.queried_tokens == 12 + 11 + 11


def test_the_last_prompt_token_is_always_computed() -> None:
    m = manager(block_size=4)
    prompt = list(range(8))  # exactly two blocks
    m.admit(0, prompt, 2)
    m.grow(0, 8)
    m.written(0, 8)
    # the same prompt again: only the first block is served from the cache, the second (which
    # holds the last token, whose logits are needed) is computed into a block of its own
    assert m.admit(1, prompt, 2) == 4
    m.grow(1, 8)
    assert m.tables[1, 0] == m.tables[0, 0] and m.tables[1, 1] != m.tables[0, 1]


def test_released_prefixes_stay_cached_until_their_blocks_are_needed() -> None:
    m = manager(blocks=4, block_size=4, context=16)
    prompt = list(range(9))
    m.admit(0, prompt, 3)  # 12 tokens: 3 blocks
    m.grow(0, 12)
    m.written(0, 9)
    m.release(0)  # blocks free, but two of them keep their prefix keys
    assert m.available_blocks == 4 and m.pool.num_cached == 2
    assert m.admit(1, prompt, 3) == 8  # a hit after release
    m.release(1)
    m.admit(2, list(range(100, 113)), 3)  # needs all four blocks: the cached ones are evicted
    m.grow(2, 16)
    assert m.pool.num_cached == 0
    m.release(2)
    assert m.admit(3, prompt, 3) == 0


def test_a_hit_on_an_idle_cached_block_counts_against_admission() -> None:
    """Reusing a released (cached) block takes it off the free queue, so it costs a free block:
    admitting past that would leave a running sequence unable to grow."""
    m = manager(blocks=4, block_size=2, context=8)
    m.admit(0, [1, 2, 3], 1)
    m.grow(0, 4)
    m.written(0, 4)
    m.release(0)  # block 0 keeps the key of [1, 2]
    m.admit(1, [7, 7, 7, 7, 7], 1)  # reserves 3 blocks: 1 available
    assert not m.can_admit([1, 2, 3], 1)  # 1 new block + the idle hit = 2
    with pytest.raises(OutOfBlocks):
        m.admit(2, [1, 2, 3], 1)
    m.grow(1, 6)
    assert m.available_blocks == 1


def test_cached_blocks_are_evicted_least_recently_used_first() -> None:
    m = manager(blocks=4, block_size=2, context=8)
    a, b = [1, 2, 3], [4, 5, 6]
    for slot, prompt in ((0, a), (1, b)):
        m.admit(slot, prompt, 1)
        m.grow(slot, 4)
        m.written(slot, 4)
    m.release(0)
    m.release(1)  # a's blocks were released first: they go first
    m.admit(2, [9, 9, 9], 1)
    m.grow(2, 4)  # takes a's two blocks
    assert m.admit(3, a, 1) == 0 and m.prefix_stats.hit_tokens == 0
    m.release(3)
    assert m.admit(3, b, 1) == 2


def test_prefix_caching_off_never_shares() -> None:
    m = KVBlockManager(BlockPool(8), 4, 2, 32, prefix_caching=False)
    m.admit(0, list(range(9)), 1)
    m.grow(0, 9)
    m.written(0, 9)
    assert m.admit(1, list(range(9)), 1) == 0 and m.pool.num_cached == 0


class BlockTablesMachine(RuleBasedStateMachine):
    """Any sequence of admissions, growth, writes and releases keeps the books consistent, a
    sequence that was admitted can always grow to its capacity (no preemption is ever needed),
    and every token a sequence counts as present (cached, copied or written) is in its blocks:
    a simulated cache holds each slot's token ids, copies applied before each write as the engine
    applies them before each step."""

    def __init__(self) -> None:
        super().__init__()
        self.m = KVBlockManager(BlockPool(12), 3, 4, 24, min_tail_tokens=1)
        self.capacity: dict[int, int] = {}
        self.prompt: dict[int, list[int]] = {}
        self.present: dict[int, int] = {}  # leading tokens the slot's blocks hold
        self.cache = np.full((12, 3), -1)  # the token id at each (block, offset)

    def token(self, slot: int, position: int) -> int:
        prompt = self.prompt[slot]
        return prompt[position] if position < len(prompt) else 1000 + 100 * slot + position

    def apply_copies(self) -> None:
        for src, dst in self.m.take_copies():
            self.cache[dst] = self.cache[src]

    @rule(
        slot=st.integers(0, 3),
        prompt=st.lists(st.integers(0, 2), min_size=1, max_size=14),
        new=st.integers(1, 10),
    )
    def admit(self, slot: int, prompt: list[int], new: int) -> None:
        if slot in self.capacity or len(prompt) + new > 24 or not self.m.can_admit(prompt, new):
            return
        cached = self.m.admit(slot, prompt, new)
        assert cached < len(prompt)
        self.capacity[slot] = len(prompt) + new
        self.prompt[slot] = prompt
        self.present[slot] = cached

    @precondition(lambda self: bool(self.capacity))
    @rule(data=st.data())
    def grow_and_write(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from(sorted(self.capacity)))
        tokens = data.draw(st.integers(self.present[slot], self.capacity[slot]))
        self.m.grow(slot, tokens)
        self.apply_copies()  # the engine's copies run before the step that writes
        for position in range(self.present[slot], tokens):
            self.cache[self.m.tables[slot, position // 3], position % 3] = self.token(slot, position)
        self.present[slot] = max(self.present[slot], tokens)
        self.m.written(slot, tokens)

    @precondition(lambda self: bool(self.capacity))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from(sorted(self.capacity)))
        self.m.release(slot)
        del self.capacity[slot], self.prompt[slot], self.present[slot]

    @invariant()
    def books_balance(self) -> None:
        m = self.m
        refs = np.zeros(m.pool.num_blocks, int)
        for slot in range(m.tables.shape[0]):
            row = m.tables[slot]
            listed = row[row != UNASSIGNED]
            refs[listed] += 1
            if slot not in self.capacity:
                assert len(listed) == 0
        assert all(m.pool.refcount(b) == refs[b] for b in range(m.pool.num_blocks))
        # a block in two tables is a cached (keyed) prefix block
        assert all(m.pool.key(int(b)) is not None for b in np.flatnonzero(refs > 1))
        assert m.pool.num_free == int((refs == 0).sum())
        assert m.available_blocks >= 0

    @invariant()
    def present_tokens_are_in_the_blocks(self) -> None:
        self.apply_copies()
        for slot, present in self.present.items():
            for position in range(present):
                block = self.m.tables[slot, position // 3]
                assert self.cache[block, position % 3] == self.token(slot, position), (slot, position)

    def teardown(self) -> None:
        for slot, cap in self.capacity.items():  # every admitted sequence can reach its capacity
            self.m.grow(slot, cap)


TestBlockTables = BlockTablesMachine.TestCase
TestBlockTables.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)


def tails(blocks: int = 16) -> KVBlockManager:
    return KVBlockManager(BlockPool(blocks), 4, 4, 32, min_tail_tokens=1)


def test_a_repeated_prompt_copies_its_last_partial_block() -> None:
    m = tails()
    prompt = list(range(1, 11))  # blocks [1-4] [5-8] [9 10]
    m.admit(0, prompt, 2)
    m.grow(0, 10)
    m.written(0, 10)
    assert m.take_copies() == []
    # again: two full blocks by reference, and token 9 from a copy of block 2 (token 10, the
    # last, is computed: its logits give the first generated token)
    assert m.admit(1, prompt, 2) == 9
    assert list(m.tables[1, :2]) == list(m.tables[0, :2])
    own = int(m.tables[1, 2])
    assert own not in m.tables[0] and m.take_copies() == [(int(m.tables[0, 2]), own)]
    assert m.take_copies() == []
    # longer: the whole partial block is shared, and what follows is computed
    assert m.admit(2, [*prompt, 11, 12, 13], 2) == 10
    assert m.prefix_stats.hit_tokens == 9 + 10


def test_a_prompt_diverging_inside_a_full_block_copies_its_shared_start() -> None:
    m = tails()
    m.admit(0, list(range(1, 11)), 2)
    m.grow(0, 10)
    m.written(0, 10)
    assert m.admit(1, [1, 2, 3, 4, 5, 6, 99, 100, 101], 2) == 6  # block 0 shared, block 1 copied
    src, dst = m.take_copies()[0]
    assert src == m.tables[0, 1] and dst == m.tables[1, 1]
    assert m.admit(2, [1, 2, 77, 78, 79], 2) == 2  # inside the first block: a copy of it
    assert m.take_copies() == [(int(m.tables[0, 0]), int(m.tables[2, 0]))]


def test_tails_need_enough_shared_tokens_and_leave_with_their_block() -> None:
    m = KVBlockManager(BlockPool(4), 4, 4, 16)  # the default minimum: more than a 4-token block
    m.admit(0, list(range(1, 8)), 1)
    m.grow(0, 8)
    m.written(0, 7)
    assert m.admit(1, list(range(1, 8)), 1) == 4 and m.take_copies() == []
    m.release(1)
    m.release(0)
    m = tails(blocks=3)
    m.admit(0, list(range(1, 8)), 1)  # blocks [1-4] [5 6 7]
    m.grow(0, 8)
    m.written(0, 7)
    m.release(0)
    m.admit(1, [50, 51, 52, 53, 54, 55, 56, 57, 58], 3)  # takes every block: both are evicted
    m.grow(1, 12)
    m.release(1)
    assert m.admit(2, list(range(1, 8)), 1) == 0 and m.take_copies() == []


@pytest.mark.parametrize("tokens_first", [False, True])
def test_block_copies_run_in_order_and_only_up_to_their_count(tokens_first: bool) -> None:
    """`steps.copy_blocks` on both layouts (the CPU kernel's [P, 2H, BS, D], the Pallas kernel's
    [P, BS, 2H, D]): blocks are axis 0, a copy may read an earlier copy's target, padding past the
    count copies nothing."""
    shape = (5, 4, 2, 3) if tokens_first else (5, 2, 4, 3)
    pages = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    cache = [{"kv": jnp.asarray(pages)}, {"kv": jnp.asarray(-pages)}]
    src = np.array([1, 3, 0, 0], np.int32)
    dst = np.array([3, 4, 2, 1], np.int32)  # 1 -> 3, then 3 (now block 1) -> 4; the rest is padding
    out = steps.copy_blocks(cache, jnp.asarray(src), jnp.asarray(dst), jnp.int32(2))
    want = pages.copy()
    want[3] = pages[1]
    want[4] = pages[1]
    np.testing.assert_array_equal(np.asarray(out[0]["kv"]), want)
    np.testing.assert_array_equal(np.asarray(out[1]["kv"]), -want)
