"""Allowed-token bitmasks applied to logits on device (structured outputs).

The orchestrator's grammar matchers (`orchestrator/grammar.py`) write one int32 row per slot, bit
t%32 of word t//32 set when token t may come next (llguidance's and xgrammar's layout); a row of all
ones (-1) leaves a slot unconstrained. The engine unpacks the rows inside its jitted step and sends
disallowed logits to -inf before sampling, so only [B, V/32] words cross to the device per step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def apply_bitmask(logits: jax.Array, bitmask: jax.Array) -> jax.Array:
    """logits [B, V], bitmask int32 [B, ceil(V/32)] -> logits with disallowed tokens at -inf."""
    vocab = logits.shape[-1]
    ids = jnp.arange(vocab, dtype=jnp.int32)
    words = jnp.take(bitmask, ids >> 5, axis=1)  # [B, V]: the word holding each token's bit
    allowed = jnp.bitwise_and(jnp.right_shift(words, ids & 31), 1) != 0
    return jnp.where(allowed, logits, jnp.asarray(-jnp.inf, logits.dtype))


def constrain(logits: jax.Array, bitmask: jax.Array | None) -> jax.Array:
    """`apply_bitmask`, or the logits untouched when no row is constrained (None: nothing traced)."""
    return logits if bitmask is None else apply_bitmask(logits, bitmask)
