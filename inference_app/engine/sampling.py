"""Per-slot sampling: greedy, temperature, top-k, top-p; seeded by (seed, position).

The key of the token at position p of a request is `fold_in(PRNGKey(seed), p)`, so the same
seed and prompt give the same tokens whatever else shares the batch. Called inside the engine's
jitted device programs (`steps.py`), on the logits of the rows a step samples.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from inference_app.kernels import ops as cpu_kernels
from inference_app.kernels.ops import PURE_JAX, KernelChoice
from inference_app.model.transformer import row_sum

# How a choice draws its tokens (static, picked on host from the rows' settings): "greedy" when
# every row is; "full" when no sampled row truncates (top_k 0, top_p 1: OpenAI's defaults);
# "truncated" (a vocabulary sort) when one does.
Sampler = Literal["greedy", "full", "truncated"]

BLOCK = 128  # vocabulary entries per block of `sample_full`'s two-level inverse CDF


def greedy(logits: jax.Array, kernels: KernelChoice = PURE_JAX) -> jax.Array:
    """logits [B, V] -> int32 [B]."""
    if kernels.cpu and logits.ndim == 2:
        return cpu_kernels.argmax(logits)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def sample(
    logits: jax.Array,
    temperature: jax.Array,
    top_k: jax.Array,
    top_p: jax.Array,
    seeds: jax.Array,
    positions: jax.Array,
    kernels: KernelChoice = PURE_JAX,
) -> jax.Array:
    """Sample one token per row. All per-row arrays are [B]; temperature 0 means greedy.

    top_k 0 disables top-k; top_p 1 disables nucleus; `positions` are where the sampled tokens
    will sit (they pick the random key). The caller runs `greedy` instead when every row is
    greedy (the vocabulary sort dominates this function).
    """
    is_greedy = temperature <= 0.0
    vocab = logits.shape[-1]
    t = jnp.where(is_greedy, 1.0, temperature)[:, None]
    order = jnp.argsort(-logits, axis=-1)  # [B, V] descending
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1) / t
    rank = jnp.arange(vocab)[None, :]
    k = jnp.where(top_k > 0, top_k, vocab)[:, None]
    keep = rank < k
    probs = jax.nn.softmax(jnp.where(keep, sorted_logits, -jnp.inf), axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each candidate
    keep = keep & ((before < top_p[:, None]) | (rank == 0))
    masked = jnp.where(keep, sorted_logits, -jnp.inf)
    # an index into the sorted order
    choice = jax.vmap(jax.random.categorical)(_row_keys(seeds, positions), masked)
    sampled = jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0]
    return jnp.where(is_greedy, greedy(logits, kernels), sampled).astype(jnp.int32)


def sample_full(
    logits: jax.Array,
    temperature: jax.Array,
    seeds: jax.Array,
    positions: jax.Array,
    kernels: KernelChoice = PURE_JAX,
) -> jax.Array:
    """Sample one token per row from the whole distribution at `temperature` (0: greedy), with no
    sort and one random number per row: the inverse CDF, found block by block.

    `sample` sorts the vocabulary and draws one Gumbel number per entry: about 10 ms per row on
    XLA:CPU for a 49k vocabulary (655 ms for 64 rows), where a decode step of the model takes
    ~40 ms. Every sum here is fixed in order per row (`row_sum` and `_scan_sum`: elementwise adds), so
    a row's token does not depend on the others; tokens of probability 0 (masked) are never drawn.
    """
    rows, vocab = logits.shape
    is_greedy = temperature <= 0.0
    t = jnp.where(is_greedy, 1.0, temperature)[:, None]
    z = logits.astype(jnp.float32) / t
    probs = jnp.exp(z - jnp.max(z, axis=-1, keepdims=True))  # unnormalised; masked entries 0
    blocks = -(-vocab // BLOCK)
    probs = jnp.pad(probs, ((0, 0), (0, blocks * BLOCK - vocab))).reshape(rows, blocks, BLOCK)
    u = jax.vmap(jax.random.uniform)(_row_keys(seeds, positions))  # [R] in [0, 1)
    block_cdf = _scan_sum(row_sum(probs))  # [R, blocks]
    below = jnp.pad(block_cdf[:, :-1], ((0, 0), (1, 0)))  # mass before each block
    target = u * block_cdf[:, -1]
    b = _pick(block_cdf, target, block_cdf > below)
    inside = jnp.take_along_axis(probs, b[:, None, None], axis=1)[:, 0]  # [R, BLOCK]
    before = jnp.take_along_axis(below, b[:, None], axis=1)[:, 0]
    j = _pick(_scan_sum(inside), target - before, inside > 0)
    sampled = b * BLOCK + j
    return jnp.where(is_greedy, greedy(logits, kernels), sampled).astype(jnp.int32)


def _row_keys(seeds: jax.Array, positions: jax.Array) -> jax.Array:
    """Each row's random key: its request's seed folded with the token's position."""
    return jax.vmap(lambda s, p: jax.random.fold_in(jax.random.key(s), p))(seeds, positions)


def _scan_sum(x: jax.Array) -> jax.Array:
    """Inclusive cumulative sum over the last axis by doubling (elementwise adds in a fixed order)."""
    shift = 1
    while shift < x.shape[-1]:
        x = x + jnp.pad(x[..., :-shift], ((0, 0), (shift, 0)))
        shift *= 2
    return x


def _pick(cdf: jax.Array, target: jax.Array, nonzero: jax.Array) -> jax.Array:
    """The first entry whose cumulative sum exceeds `target` [R], limited to the last entry of
    nonzero mass (float sums in two orders can disagree in the last bit at the very end)."""
    idx = jnp.sum(cdf <= target[:, None], axis=-1)
    last = jnp.max(jnp.where(nonzero, jnp.arange(cdf.shape[-1]), 0), axis=-1)
    return jnp.minimum(idx, last).astype(jnp.int32)
