"""Attention over the paged KV cache: writing token rows into blocks, the plain-JAX reference, the
native CPU kernel and JAX's Pallas TPU ragged paged attention kernel (in TPU interpret mode), all
against one NumPy computation of attention over each sequence's tokens."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inference_app.engine.block_tables import UNASSIGNED
from inference_app.kernels import build
from inference_app.model import paged_attention as pa
from tests.inference_app.model.pallas_interpret import tpu_interpret_mode

RNG = np.random.default_rng(11)
KVH, G = 3, 3
SCALE = 0.125

needs_kernels = pytest.mark.skipif(not build.available(), reason="the CPU kernels did not build here")


class Case:
    """Four sequences' K/V scattered over shuffled blocks, and one step's rows: decode rows (one
    at the last token of a block), a prompt chunk that crosses a block boundary, a one-token
    sequence, then padding rows."""

    def __init__(self, d: int = 64, block_size: int = 8, num_blocks: int = 24, t: int = 40) -> None:
        self.d, self.bs, self.num_blocks, self.t = d, block_size, num_blocks, t
        self.k = RNG.standard_normal((4, t, KVH, d)).astype(np.float32) * 2
        self.v = RNG.standard_normal((4, t, KVH, d)).astype(np.float32)
        self.lengths = [t, t, 18, 1]
        mb = -(-t // block_size)
        self.tables = np.full((4, mb), UNASSIGNED, np.int32)
        free = list(RNG.permutation(num_blocks))
        for s, n in enumerate(self.lengths):
            for j in range(-(-n // block_size)):
                self.tables[s, j] = free.pop()
        self.slots = np.array([0, 1, *[2] * 8, 3, 4, 4, 9], np.int32)
        self.positions = np.array([t - 1, block_size - 1, *range(10, 18), 0, 0, t, 3], np.int32)
        self.q = RNG.standard_normal((len(self.slots), KVH, G, d)).astype(np.float32)

    def pages(
        self, layout: pa.PagedLayout, dtype: jnp.dtype = jnp.float32, skip_rows: bool = False
    ) -> jax.Array:
        """Every sequence's tokens written through `token_blocks` + `write_kv` (but the step's own
        rows with `skip_rows`: the step writes those)."""
        slots = np.concatenate([np.full(n, s, np.int32) for s, n in enumerate(self.lengths)])
        pos = np.concatenate([np.arange(n, dtype=np.int32) for n in self.lengths])
        if skip_rows:
            step = set(zip(self.slots.tolist(), self.positions.tolist(), strict=True))
            keep = np.array([(s, p) not in step for s, p in zip(slots.tolist(), pos.tolist(), strict=True)])
            slots, pos = slots[keep], pos[keep]
        k, v = self.k[slots, pos], self.v[slots, pos]
        blocks, offsets = pa.token_blocks(
            jnp.asarray(self.tables), jnp.asarray(slots), jnp.asarray(pos), layout
        )
        return pa.write_kv(pa.zeros(layout, dtype), layout, jnp.asarray(k), jnp.asarray(v), blocks, offsets)

    def expected(self) -> np.ndarray:
        out = np.zeros(self.q.shape, np.float64)
        for r, (s, p) in enumerate(zip(self.slots, self.positions, strict=True)):
            if s >= 4 or p >= self.lengths[s]:
                continue  # padding row: zeros
            sc = np.einsum("kgd,tkd->kgt", self.q[r], self.k[s, : p + 1]) * SCALE
            w = np.exp(sc - sc.max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            out[r] = np.einsum("kgt,tkd->kgd", w, self.v[s, : p + 1])
        return out

    def layout(self, kernel: pa.AttentionKernel, dtype: jnp.dtype = jnp.float32) -> pa.PagedLayout:
        return pa.paged_layout(kernel, self.num_blocks, self.bs, KVH, self.d, dtype)


# ----- layout and writes -----------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["cpu", "pallas_tpu"])
def test_written_tokens_read_back_in_order_and_padding_stays_zero(kernel: pa.AttentionKernel) -> None:
    c = Case()
    layout = c.layout(kernel)
    pages = c.pages(layout)
    for s, n in enumerate(c.lengths):
        k, v = pa._gather(pages, layout, jnp.asarray(np.maximum(c.tables[s : s + 1], 0)))
        np.testing.assert_array_equal(np.asarray(k)[0, :n], c.k[s, :n])
        np.testing.assert_array_equal(np.asarray(v)[0, :n], c.v[s, :n])
    if kernel == "pallas_tpu":  # 3 KV heads stored as 4, head size 64 as 128: the padding is zero
        assert layout.shape == (24, 8, 8, 128)
        p = np.asarray(pages)
        assert not p[:, :, 2 * KVH :].any() and not p[..., 64:].any()
    else:
        assert layout.shape == (24, 6, 8, 64)


def test_padding_rows_write_nothing() -> None:
    c = Case()
    layout = c.layout("cpu")
    tables = jnp.asarray(c.tables)
    # out-of-range slot, negative slot, position past the table, a table entry never assigned
    slots = jnp.array([4, -1, 0, 3], jnp.int32)
    pos = jnp.array([0, 0, 10_000, 20], jnp.int32)
    blocks, _ = pa.token_blocks(tables, slots, pos, layout)
    assert (np.asarray(blocks) == layout.num_blocks).all()
    ones = jnp.ones((4, KVH, c.d), jnp.float32)
    pages = pa.write_kv(pa.zeros(layout, jnp.float32), layout, ones, ones, blocks, pos % c.bs)
    assert not np.asarray(pages).any()


def test_layout_sizes_for_the_pallas_kernel() -> None:
    assert pa.pallas_kv_heads(3, jnp.float32) == 4
    assert pa.pallas_kv_heads(3, jnp.bfloat16) == 4
    assert pa.pallas_kv_heads(8, jnp.bfloat16) == 8
    assert pa.pallas_kv_heads(6, jnp.float32) == 8
    assert pa.pallas_kv_heads(1, jnp.float32) == 1
    lay = pa.paged_layout("pallas_tpu", 10, 16, 3, 64, jnp.bfloat16)
    assert lay.bytes_per_token(jnp.bfloat16) == 2 * 4 * 128 * 2
    assert pa.paged_layout("cpu", 10, 16, 3, 64, jnp.float32).bytes_per_token(jnp.float32) == 2 * 3 * 64 * 4
    with pytest.raises(ValueError, match="num_blocks and block_size"):
        pa.paged_layout("cpu", 0, 16, 3, 64, jnp.float32)


# ----- attention -------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["cpu", "pallas_tpu"])
def test_reference_attention_matches_numpy(kernel: pa.AttentionKernel) -> None:
    c = Case()
    layout = c.layout(kernel)
    got = pa.reference_attention(
        jnp.asarray(c.q),
        c.pages(layout),
        layout,
        jnp.asarray(c.tables),
        jnp.asarray(c.slots),
        jnp.asarray(c.positions),
        SCALE,
        kv_len=c.t,
    )
    np.testing.assert_allclose(np.asarray(got), c.expected(), rtol=2e-5, atol=2e-5)


@needs_kernels
@pytest.mark.parametrize(
    ("d", "block_size"), [(64, 8), (64, 6), (12, 5)]
)  # fast path, block tails, any head size
def test_cpu_kernel_matches_numpy(d: int, block_size: int) -> None:
    c = Case(d=d, block_size=block_size)
    layout = c.layout("cpu")
    attend = jax.jit(pa.cpu_attention, static_argnums=(2, 6))
    got = attend(
        jnp.asarray(c.q), c.pages(layout), layout, jnp.asarray(c.tables), c.slots, c.positions, SCALE
    )
    np.testing.assert_allclose(np.asarray(got), c.expected(), rtol=2e-5, atol=2e-5)


@needs_kernels
def test_cpu_kernel_reads_nothing_for_rows_without_blocks() -> None:
    """A row whose position lies past its sequence's assigned blocks is padding (zeros), not a
    read of block -1 or of another sequence's memory."""
    c = Case()
    layout = c.layout("cpu")
    pages = c.pages(layout)
    q = jnp.ones((2, KVH, G, c.d), jnp.float32)
    got = pa.cpu_attention(
        q, pages, layout, jnp.asarray(c.tables), jnp.array([3, 3]), jnp.array([30, 0]), SCALE
    )
    assert not np.asarray(got)[0].any()
    np.testing.assert_allclose(
        np.asarray(got)[1], np.broadcast_to(c.v[3, 0][:, None, :], (KVH, G, c.d)), rtol=1e-6
    )
    with pytest.raises(ValueError, match="heads-first float32"):
        pa.cpu_attention(
            q,
            pages,
            c.layout("pallas_tpu"),
            jnp.asarray(c.tables),
            jnp.array([0, 0]),
            jnp.array([0, 0]),
            SCALE,
        )


def test_rows_group_into_sequences_for_the_pallas_kernel() -> None:
    c = Case()
    seqs = pa.ragged_sequences(c.slots, c.positions, num_slots=4)
    assert seqs.num_seqs.tolist() == [4]
    assert seqs.slots.tolist() == [0, 1, 2, 3]
    assert seqs.cu_q_lens.tolist() == [0, 1, 2, 10, 11]
    assert seqs.kv_lens.tolist() == [c.t, c.bs, 18, 1]
    with pytest.raises(ValueError, match="padding rows must come after"):
        pa.ragged_sequences(np.array([4, 0]), np.array([0, 0]), 4)
    with pytest.raises(ValueError, match="consecutive positions"):
        pa.ragged_sequences(np.array([0, 0]), np.array([3, 5]), 4)
    with pytest.raises(ValueError, match="two runs"):
        pa.ragged_sequences(np.array([0, 1, 0]), np.array([3, 1, 4]), 4)


def _pallas(c: Case, patched: bool = True) -> np.ndarray:
    layout = c.layout("pallas_tpu")
    pages = c.pages(layout)
    seqs = pa.ragged_sequences(c.slots, c.positions, num_slots=4)
    with tpu_interpret_mode(patched):
        out = pa.pallas_attention(
            jnp.asarray(c.q),
            pages,
            layout,
            jnp.asarray(c.tables),
            seqs,
            SCALE,
            queries_per_block=2,
            kv_pages_per_block=2,
        )
        return np.asarray(out)


def test_pallas_ragged_kernel_matches_the_cpu_path() -> None:
    """The TPU kernel, run by the Pallas TPU interpreter on the same step (decode rows, a prompt
    chunk across a block boundary, a one-token sequence, padding rows), gives what the CPU path
    gives: the native kernel where it is built, else the plain-JAX reference on the CPU layout."""
    c = Case(t=24)
    got = _pallas(c)
    np.testing.assert_allclose(got, c.expected(), rtol=2e-5, atol=2e-5)
    layout = c.layout("cpu")
    q, tables, slots, pos = (jnp.asarray(x) for x in (c.q, c.tables, c.slots, c.positions))
    pages = c.pages(layout)
    cpu = (
        pa.cpu_attention(q, pages, layout, tables, slots, pos, SCALE)
        if build.available()
        else pa.reference_attention(q, pages, layout, tables, slots, pos, SCALE, kv_len=c.t)
    )
    np.testing.assert_allclose(got, np.asarray(cpu), rtol=2e-5, atol=2e-5)


@pytest.mark.slow  # only news when jax is upgraded
def test_the_tpu_interpreter_still_needs_the_reshape_shim() -> None:
    """When this fails, jax's TPU interpreter reads reshaped refs itself: delete
    `pallas_interpret.reads_through_reshape`."""
    with pytest.raises(Exception, match="ReshapeTransform"):
        _pallas(Case(t=24), patched=False)


@pytest.mark.parametrize("kernel", ["cpu", "reference"])
def test_paged_attention_writes_the_steps_rows_then_attends(kernel: pa.AttentionKernel) -> None:
    """The model's attention seam: a step's rows (their K/V not yet in the cache) are written into
    their blocks, and attention sees them, as if the whole sequences had been written before."""
    if kernel == "cpu" and not build.available():
        pytest.skip("the CPU kernels did not build here")
    c = Case()
    layout = c.layout("cpu")
    real = c.slots < 4
    rows_k = np.where(real[:, None, None], c.k[np.minimum(c.slots, 3), np.minimum(c.positions, c.t - 1)], 7.0)
    rows_v = np.where(real[:, None, None], c.v[np.minimum(c.slots, 3), np.minimum(c.positions, c.t - 1)], 7.0)

    @jax.jit
    def step(pages: jax.Array, q: jax.Array, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
        attn = pa.PagedAttention.for_rows(
            kernel, layout, jnp.asarray(c.tables), jnp.asarray(c.slots), jnp.asarray(c.positions), kv_len=c.t
        )
        out, cache = attn(q, k, v, {"kv": pages})
        return out, cache["kv"]

    out, pages = step(
        c.pages(layout, skip_rows=True), jnp.asarray(c.q), jnp.asarray(rows_k), jnp.asarray(rows_v)
    )
    np.testing.assert_allclose(np.asarray(out), c.expected(), rtol=2e-5, atol=2e-5)
    np.testing.assert_array_equal(
        np.asarray(pages), np.asarray(c.pages(layout))
    )  # padding rows wrote nothing


def test_paged_attention_needs_what_its_kernel_reads() -> None:
    c = Case()
    args = (jnp.asarray(c.tables), jnp.asarray(c.slots), jnp.asarray(c.positions))
    with pytest.raises(ValueError, match="grouped by sequence"):
        pa.PagedAttention.for_rows("pallas_tpu", c.layout("pallas_tpu"), *args)
    with pytest.raises(ValueError, match="static kv_len"):
        pa.PagedAttention.for_rows("reference", c.layout("cpu"), *args)
