"""Running JAX's Pallas TPU ragged paged attention kernel on CPU, in TPU interpret mode.

jax 0.10.2's TPU interpreter cannot read through a reshaped ref (its range computation expects
only index transforms: "'ReshapeTransform' object has no attribute 'indices'"), and the ragged
kernel reshapes its KV buffer before loading K and V rows from it. `reads_through_reshape` lets
the interpreter read the un-reshaped range and applies the reshape and the later indexing to the
values in NumPy, which is what the kernel asks for. The kernel itself runs unchanged.
`test_paged_attention.py` checks that the interpreter still needs this; drop it when not.

A second interpreter bug is sidestepped, not patched: a masked store into a slice checks bounds
along the first axis with every dimension's size, so the tests keep `num_queries_per_block` no
larger than the query heads per KV head and the head size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
from jax._src.pallas.mosaic.interpret import interpret_pallas_call as tpu_interpret
from jax._src.state import indexing
from jax._src.state import types as state_types
from jax.experimental.pallas import tpu as pltpu


def _numpy_index(transform: Any) -> tuple[Any, ...]:
    out: list[Any] = []
    for i in transform.indices:
        if isinstance(i, indexing.Slice):
            start, size, stride = int(i.start), int(i.size), int(i.stride)
            out.append(slice(start, start + size * stride, stride))
        else:
            out.append(np.asarray(i))
    return tuple(out)


@contextlib.contextmanager
def reads_through_reshape() -> Iterator[None]:
    original = tpu_interpret.get

    def get(
        token: Any, device_id: Any, core: Any, space: Any, buffer: Any, transforms: Any, *a: Any, **kw: Any
    ) -> Any:
        cut = next((n for n, t in enumerate(transforms) if isinstance(t, state_types.ReshapeTransform)), None)
        if cut is None:
            return original(token, device_id, core, space, buffer, transforms, *a, **kw)
        token, value = original(token, device_id, core, space, buffer, transforms[:cut], *a, **kw)
        for t in transforms[cut:]:
            value = (
                value.reshape(t.shape)
                if isinstance(t, state_types.ReshapeTransform)
                else value[_numpy_index(t)]
            )
        return token, value

    get.__wrapped__ = original.__wrapped__  # type: ignore[attr-defined]  # DMAs call the unwrapped one
    tpu_interpret.get = get
    try:
        yield
    finally:
        tpu_interpret.get = original


@contextlib.contextmanager
def tpu_interpret_mode(patched: bool = True) -> Iterator[None]:
    """Pallas TPU kernels traced inside run in the TPU interpreter on CPU."""
    with pltpu.force_tpu_interpret_mode(), reads_through_reshape() if patched else contextlib.nullcontext():
        yield
