"""Does XLA:CPU's float32 dot give a row the same bits whatever the row count? (It does not.)

Why: prompt rows on float32 weights beside decode rows on the GGUF blocks would prefill faster
(XLA's float32 GEMM runs 107-119 GFLOP/s at 256 rows, the block kernel 70-80). But the blocks
round activations to int8, so any last-bit difference a row picks up from its step's row count
can change a greedy token (`results_block_weights.md`). This counts, for the model's widest
product shapes and the engine's step row buckets, the rows of an M-row dot whose result differs
in any bit from the same row computed alone.

    .venv/bin/python bench/model/dot_row_invariance.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

ROWS = (2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
SHAPES = {"wqkv 576->960": (576, 960), "w_gate_up 576->3072": (576, 3072), "w_down 1536->576": (1536, 576)}


def main() -> int:
    rng = np.random.default_rng(0)
    for name, (k, n) in SHAPES.items():
        x = rng.standard_normal((max(ROWS), k)).astype(np.float32)
        w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        dot = jax.jit(lambda a, w=w: jnp.dot(a, w, preferred_element_type=jnp.float32))
        alone = np.concatenate([np.asarray(dot(x[r : r + 1])) for r in range(max(ROWS))])
        counts = {m: int(np.any(np.asarray(dot(x[:m])) != alone[:m], axis=1).sum()) for m in ROWS}
        print(f"{name}: rows differing from the row alone, by row count: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
