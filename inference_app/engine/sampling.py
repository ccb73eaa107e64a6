"""Per-slot sampling: greedy, temperature, top-k, top-p; seeded by (seed, position).

The key of the token at position p of a request is `fold_in(PRNGKey(seed), p)`, so the same
seed and prompt give the same tokens whatever else shares the batch. Called inside the engine's
jitted device programs (`steps.py`), on the logits of the rows a step samples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from inference_app.kernels import ops as cpu_kernels
from inference_app.kernels.ops import PURE_JAX, KernelChoice


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
    keys = jax.vmap(lambda s, p: jax.random.fold_in(jax.random.key(s), p))(seeds, positions)
    choice = jax.vmap(jax.random.categorical)(keys, masked)  # index into the sorted order
    sampled = jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0]
    return jnp.where(is_greedy, greedy(logits, kernels), sampled).astype(jnp.int32)
