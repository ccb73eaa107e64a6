"""The paged KV cache on device: block layout, writing token rows into blocks, attention over them.

Where it sits: the engine decides which block holds which tokens (`engine/block_tables.py`: one
table row per sequence; token t of a sequence lives in block table[t // BS] at offset t % BS).
In every step the model writes each token row's K/V into its block (`write_kv`, at the
`token_blocks` of the row) and then attends over the blocks, through one kernel chosen once per
engine:

    "cpu"         the native kernel (kernels/cpu_kernels.cc `cpu_paged_attention`), reading the
                  blocks in place; one call serves decode rows and prompt-chunk rows alike
    "pallas_tpu"  JAX's Pallas TPU ragged paged attention (`pallas_attention`): decode rows and
                  prompt chunks in one call, from per-sequence metadata (`ragged_sequences`)
    "reference"   plain JAX (`reference_attention`): gathers each row's sequence up to a static
                  length. Any platform; the oracle the kernels are tested against

`PagedAttention` bundles that for one step: it is the model's attention seam (the `Attention` of
`model/transformer.py`), so the layer loop does not know the cache is paged.

One array per layer holds the K and V of every block, laid out for the kernel that reads it:

    heads-first   [P, 2*KVH, BS, D]: K of KV head h in slab 2h, V in slab 2h + 1, so each
                  (block, head) slab is contiguous: what the CPU kernel streams
    tokens-first  [P, BS, 2*KVH', D']: the Pallas kernel's layout, K and V of every head
                  interleaved in each token row. The kernel tiles 2*KVH' (3 KV heads are stored as
                  4) and needs D' to be a multiple of 128; the padding is zeros, which changes no
                  result (zero keys and values in padded dims add nothing to a dot product, and
                  padded heads' outputs are dropped).

JAX also ships `pallas.ops.tpu.paged_attention`; it is not used: it decodes only (one query per
sequence, so prompt chunks would need a second path) and reads K and V as separate
[KVH, P, BS, D] arrays, a third layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from inference_app.kernels import ops as cpu_kernels

AttentionKernel = Literal["cpu", "pallas_tpu", "reference"]

# Pallas TPU ragged paged attention: head_dim must be a multiple of this (its softmax statistics
# are kept 128 lanes wide and broadcast against the output).
PALLAS_LANES = 128


@dataclass(frozen=True)
class PagedLayout:
    """Shape of one layer's block array (hashable: a static argument of the jitted step)."""

    num_blocks: int
    block_size: int
    kv_heads: int  # the model's
    head_dim: int  # the model's
    stored_kv_heads: int  # >= kv_heads (zero heads pad it for the Pallas kernel)
    stored_head_dim: int  # >= head_dim (zero-padded for the Pallas kernel)
    tokens_first: bool  # [P, BS, 2H, D] (Pallas) rather than [P, 2H, BS, D] (CPU kernel)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        h2 = 2 * self.stored_kv_heads
        if self.tokens_first:
            return (self.num_blocks, self.block_size, h2, self.stored_head_dim)
        return (self.num_blocks, h2, self.block_size, self.stored_head_dim)

    def bytes_per_token(self, dtype: jnp.dtype) -> int:
        """One layer's K + V bytes per cached token, padding included."""
        return 2 * self.stored_kv_heads * self.stored_head_dim * jnp.dtype(dtype).itemsize


def paged_layout(
    kernel: AttentionKernel, num_blocks: int, block_size: int, kv_heads: int, head_dim: int, dtype: jnp.dtype
) -> PagedLayout:
    """The layout `kernel` reads, for a model with `kv_heads` x `head_dim` K/V per layer."""
    if num_blocks < 1 or block_size < 1:
        raise ValueError(f"num_blocks and block_size must be >= 1, got {num_blocks} and {block_size}")
    if kernel != "pallas_tpu":
        return PagedLayout(num_blocks, block_size, kv_heads, head_dim, kv_heads, head_dim, False)
    return PagedLayout(
        num_blocks,
        block_size,
        kv_heads,
        head_dim,
        pallas_kv_heads(kv_heads, dtype),
        -(-head_dim // PALLAS_LANES) * PALLAS_LANES,
        True,
    )


def pallas_kv_heads(kv_heads: int, dtype: jnp.dtype) -> int:
    """Smallest KV head count >= kv_heads whose K+V rows the Pallas kernel can tile: 2*H values
    packed 32 bits at a time must come to 1, 2, 4, 8 or a multiple of 8 rows."""
    packing = 4 // jnp.dtype(dtype).itemsize
    h = kv_heads
    while True:
        rows, rem = divmod(2 * h, packing)
        if rem == 0 and (rows in (1, 2, 4, 8) or rows % 8 == 0):
            return h
        h += 1


def zeros(layout: PagedLayout, dtype: jnp.dtype) -> jax.Array:
    return jnp.zeros(layout.shape, dtype)


# ----- writing ---------------------------------------------------------------------------------


def token_blocks(
    block_tables: jax.Array, slots: jax.Array, positions: jax.Array, layout: PagedLayout
) -> tuple[jax.Array, jax.Array]:
    """(block, offset) of each token row: row n is token positions[n] of sequence slots[n].

    Padding rows (slot or position out of range, or no block assigned there) get block
    `num_blocks`, which `write_kv` drops.
    """
    num_slots, max_blocks = block_tables.shape
    bs = layout.block_size
    valid = (slots >= 0) & (slots < num_slots) & (positions >= 0) & (positions < max_blocks * bs)
    entry = block_tables[jnp.clip(slots, 0, num_slots - 1), jnp.clip(positions // bs, 0, max_blocks - 1)]
    valid &= (entry >= 0) & (entry < layout.num_blocks)
    return jnp.where(valid, entry, layout.num_blocks), positions % bs


def write_kv(
    pages: jax.Array, layout: PagedLayout, k: jax.Array, v: jax.Array, blocks: jax.Array, offsets: jax.Array
) -> jax.Array:
    """Scatter token rows' k, v [N, KVH, D] into their (block, offset); out-of-range blocks drop."""
    n = k.shape[0]
    rows = jnp.stack([k, v], axis=2).reshape(n, 2 * layout.kv_heads, layout.head_dim)  # k0 v0 k1 v1 ...
    rows = jnp.pad(
        rows.astype(pages.dtype),
        (
            (0, 0),
            (0, 2 * (layout.stored_kv_heads - layout.kv_heads)),
            (0, layout.stored_head_dim - layout.head_dim),
        ),
    )
    if layout.tokens_first:
        return pages.at[blocks, offsets].set(rows, mode="drop")
    heads = jnp.arange(2 * layout.stored_kv_heads)
    return pages.at[blocks[:, None], heads[None, :], offsets[:, None]].set(rows, mode="drop")


# ----- attention -------------------------------------------------------------------------------


def cpu_attention(
    q: jax.Array,
    pages: jax.Array,
    layout: PagedLayout,
    block_tables: jax.Array,
    slots: jax.Array,
    positions: jax.Array,
    scale: float,
) -> jax.Array:
    """q [N, KVH, G, D] -> [N, KVH, G, D] f32: row n attends to tokens 0..positions[n] of its
    sequence; padding rows get zeros. Heads-first float32 pages only."""
    if layout.tokens_first or pages.dtype != jnp.float32:
        raise ValueError("the CPU paged kernel reads heads-first float32 blocks")
    return cpu_kernels.paged_attention(q, pages, block_tables, slots, positions, scale)


def reference_attention(
    q: jax.Array,
    pages: jax.Array,
    layout: PagedLayout,
    block_tables: jax.Array,
    slots: jax.Array,
    positions: jax.Array,
    scale: float,
    kv_len: int,
) -> jax.Array:
    """What `cpu_attention` computes, in plain JAX: each row gathers the first `kv_len` tokens
    (static, >= every position + 1) of its sequence and masks those after its position."""
    num_slots, max_blocks = block_tables.shape
    nb = min(-(-kv_len // layout.block_size), max_blocks)
    valid = (slots >= 0) & (slots < num_slots) & (positions >= 0) & (positions < nb * layout.block_size)
    table = block_tables[jnp.clip(slots, 0, num_slots - 1), :nb]  # [N, nb]
    k, v = _gather(pages, layout, jnp.clip(table, 0, layout.num_blocks - 1))  # [N, T, KVH, D]
    dtype = q.dtype
    scores = jnp.einsum("nkgd,ntkd->nkgt", q, k.astype(dtype), preferred_element_type=jnp.float32) * scale
    t = jnp.arange(k.shape[1])
    scores = jnp.where((t[None, :] <= positions[:, None])[:, None, None, :], scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum(
        "nkgt,ntkd->nkgd", probs.astype(dtype), v.astype(dtype), preferred_element_type=jnp.float32
    )
    return jnp.where(valid[:, None, None, None], out, 0.0)


def _gather(pages: jax.Array, layout: PagedLayout, table: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The K and V [R, nb * BS, KVH, D] of the blocks `table` [R, nb] lists, in token order."""
    r, nb = table.shape
    blocks = pages[table]
    if not layout.tokens_first:  # [R, nb, 2H, BS, D] -> [R, nb, BS, 2H, D]
        blocks = blocks.transpose(0, 1, 3, 2, 4)
    blocks = blocks.reshape(r, nb * layout.block_size, layout.stored_kv_heads, 2, layout.stored_head_dim)
    kv = blocks[:, :, : layout.kv_heads, :, : layout.head_dim]
    return kv[..., 0, :], kv[..., 1, :]


class RaggedSequences(NamedTuple):
    """One step's token rows grouped by sequence, as the Pallas kernel reads them: sequence i is
    rows cu_q_lens[i]:cu_q_lens[i + 1] of slot slots[i], the last kv_lens[i] - (its row count)
    tokens of its first kv_lens[i]. Entries from num_seqs[0] on are unused."""

    slots: np.ndarray  # int32 [S]
    cu_q_lens: np.ndarray  # int32 [S + 1]
    kv_lens: np.ndarray  # int32 [S]
    num_seqs: np.ndarray  # int32 [1]


def ragged_sequences(slots: np.ndarray, positions: np.ndarray, num_slots: int) -> RaggedSequences:
    """Group a step's rows (host arrays) by sequence. Every real row must come before the padding
    rows (slot outside [0, num_slots)), and each sequence's rows must be one run of consecutive
    positions: what `engine/step_plan.py` lays out (decode rows, then prompt chunks)."""
    slots = np.asarray(slots)
    positions = np.asarray(positions)
    real = (slots >= 0) & (slots < num_slots)
    n = int(real.sum())
    if not real[:n].all():
        raise ValueError("padding rows must come after every real row")
    seq_slots: list[int] = []
    cu = [0]
    kv_lens: list[int] = []
    for row in range(n):
        s, p = int(slots[row]), int(positions[row])
        if seq_slots and seq_slots[-1] == s:
            if p != kv_lens[-1]:
                raise ValueError(
                    f"slot {s}: rows must hold consecutive positions, got {kv_lens[-1] - 1} then {p}"
                )
            kv_lens[-1] += 1
            cu[-1] += 1
            continue
        if s in seq_slots:
            raise ValueError(f"slot {s} appears in two runs of rows")
        if p < 0:
            raise ValueError(f"slot {s}: negative position {p}")
        seq_slots.append(s)
        kv_lens.append(p + 1)
        cu.append(cu[-1] + 1)
    out_slots = np.zeros(num_slots, np.int32)
    out_cu = np.full(num_slots + 1, cu[-1], np.int32)
    out_kv = np.zeros(num_slots, np.int32)
    out_slots[: len(seq_slots)] = seq_slots
    out_cu[: len(cu)] = cu
    out_kv[: len(kv_lens)] = kv_lens
    return RaggedSequences(out_slots, out_cu, out_kv, np.array([len(seq_slots)], np.int32))


def pallas_attention(
    q: jax.Array,
    pages: jax.Array,
    layout: PagedLayout,
    block_tables: jax.Array,
    seqs: RaggedSequences,
    scale: float,
    *,
    queries_per_block: int | None = None,
    kv_pages_per_block: int | None = None,
) -> jax.Array:
    """q [N, KVH, G, D] -> [N, KVH, G, D] through JAX's Pallas TPU ragged paged attention (rows
    grouped as `ragged_sequences` describes; rows after the last sequence get zeros). Block
    sizes default to the kernel's tuned table for the TPU it runs on."""
    from jax.experimental.pallas.ops.tpu.ragged_paged_attention import ragged_paged_attention

    if not layout.tokens_first:
        raise ValueError("the Pallas kernel reads tokens-first blocks (paged_layout('pallas_tpu', ...))")
    n, kvh, g, d = q.shape
    qp = jnp.pad(q, ((0, 0), (0, layout.stored_kv_heads - kvh), (0, 0), (0, layout.stored_head_dim - d)))
    page_indices = jnp.maximum(block_tables[seqs.slots], 0)  # [S, MB], unassigned -> a real block
    out = ragged_paged_attention(
        qp.reshape(n, layout.stored_kv_heads * g, layout.stored_head_dim),
        pages,
        jnp.asarray(seqs.kv_lens),
        page_indices,
        jnp.asarray(seqs.cu_q_lens),
        jnp.asarray(seqs.num_seqs),
        sm_scale=scale,
        num_queries_per_block=queries_per_block,
        num_kv_pages_per_block=kv_pages_per_block,
    )
    out = out.reshape(n, layout.stored_kv_heads, g, layout.stored_head_dim)[:, :kvh, :, :d]
    real = jnp.arange(n) < jnp.asarray(seqs.cu_q_lens)[jnp.asarray(seqs.num_seqs)[0]]
    return jnp.where(real[:, None, None, None], out.astype(jnp.float32), 0.0)


# ----- the model's attention seam ----------------------------------------------------------------


@dataclass(frozen=True)
class PagedAttention:
    """One step's token rows over the paged cache, for every layer: write each row's K/V into its
    block, then attend with `kernel`. The layer's cache is {"kv": pages}. Row n is token
    positions[n] of sequence slots[n]; padding rows write nothing and get zeros.

    Build it with `for_rows` inside the jitted step (its arrays are the step's inputs; `layout`,
    `kernel` and `kv_len` are static)."""

    kernel: AttentionKernel
    layout: PagedLayout
    block_tables: jax.Array  # int32 [S, MB]
    slots: jax.Array  # int32 [N]
    positions: jax.Array  # int32 [N]
    blocks: jax.Array  # int32 [N]: where each row's K/V goes (`token_blocks`), once per step
    offsets: jax.Array  # int32 [N]
    seqs: RaggedSequences | None  # "pallas_tpu": the rows grouped by sequence
    kv_len: int  # "reference": tokens gathered per row (>= every position + 1)

    @classmethod
    def for_rows(
        cls,
        kernel: AttentionKernel,
        layout: PagedLayout,
        block_tables: jax.Array,
        slots: jax.Array,
        positions: jax.Array,
        *,
        seqs: RaggedSequences | None = None,
        kv_len: int = 0,
    ) -> PagedAttention:
        if kernel == "pallas_tpu" and seqs is None:
            raise ValueError("the Pallas kernel needs the rows grouped by sequence (ragged_sequences)")
        if kernel == "reference" and kv_len < 1:
            raise ValueError("the reference attention needs a static kv_len >= 1")
        blocks, offsets = token_blocks(block_tables, slots, positions, layout)
        return cls(kernel, layout, block_tables, slots, positions, blocks, offsets, seqs, kv_len)

    def __call__(
        self, q: jax.Array, k: jax.Array, v: jax.Array, cache: dict[str, jax.Array]
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        pages = write_kv(cache["kv"], self.layout, k, v, self.blocks, self.offsets)
        scale = 1.0 / float(np.sqrt(q.shape[-1]))
        if self.kernel == "cpu":
            out = cpu_attention(q, pages, self.layout, self.block_tables, self.slots, self.positions, scale)
        elif self.kernel == "pallas_tpu":
            assert self.seqs is not None  # for_rows checked it
            out = pallas_attention(q, pages, self.layout, self.block_tables, self.seqs, scale)
        else:
            out = reference_attention(
                q, pages, self.layout, self.block_tables, self.slots, self.positions, scale, self.kv_len
            )
        return out.astype(q.dtype), {"kv": pages}
