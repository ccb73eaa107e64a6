"""Streamed, sharded placement: checkpoint rows -> per-device shards -> placed jax.Arrays.

Where it sits: `loader.load_model` opens a checkpoint; the engine builds its mesh and the
`NamedSharding` of every parameter (`engine/sharding.py`) and asks the weights to `place`
themselves. For a Hugging Face checkpoint this module does it one parameter at a time and, inside
a parameter, one device shard at a time: the reader thread reads only the HF rows that shard
covers (`weights.block` / `weights.int8_rows`), quantizes them when int8 is asked for, and hands
the host shard over a small bounded queue; the main thread `device_put`s it to its device and
drops the host copy. Matrices travel in the checkpoint's row order and dtype ([*out, *in], the
cheap side for the host) and one jitted transpose + cast per parameter, sharded like the result,
puts them in our [*in, *out] layout on the devices, where a transpose is fast. Reading the next
shard overlaps the transfer of the previous one, and host memory holds at most a few shards (the
queue depth + the one being built), never the model.

Devices holding the same block (replication) get one read. Works the same for CPU virtual
devices, TPU, and Pathways (whose single controller addresses every device).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from inference_app.model.config import ModelConfig
from inference_app.model.transformer import Params, QInt8
from inference_app.model.weights import (
    MatrixFormat,
    ParamPlan,
    Path,
    RowReader,
    abstract_params,
    block,
    build_tree,
    check_sharded,
    host_leaf,
    int8_rows,
    param_plans,
)

# Host shards waiting for their transfer (plus the one being read): the host-memory bound.
QUEUE_DEPTH = 2


@dataclass
class _Shard:
    """One host block bound for some devices; `part` names which array of the leaf it is."""

    path: Path
    part: str  # "w", or "q"/"scale" of a QInt8
    devices: list[jax.Device]
    data: np.ndarray


def _leaf_shardings(leaf: Any) -> dict[str, NamedSharding]:
    if isinstance(leaf, QInt8):
        return {"q": leaf.q, "scale": leaf.scale}
    return {"w": leaf}


def _flatten(tree: Params) -> dict[Path, Any]:
    """{path: leaf} of a params-shaped tree (the inverse of `weights.build_tree`)."""
    out: dict[Path, Any] = {(k,): v for k, v in tree.items() if k != "layers"}
    for i, layer in enumerate(tree["layers"]):
        for k, v in layer.items():
            out[("layers", i, k)] = v
    return out


def _groups(
    sharding: NamedSharding, shape: tuple[int, ...]
) -> list[tuple[tuple[slice, ...], list[jax.Device]]]:
    """Unique shard indices of `shape` under `sharding` and the devices holding each."""
    groups: dict[tuple[tuple[int, int], ...], tuple[tuple[slice, ...], list[jax.Device]]] = {}
    for dev, idx in sharding.addressable_devices_indices_map(shape).items():
        norm = tuple(slice(None) for _ in shape) if idx is None else tuple(idx)
        key = tuple(s.indices(n)[:2] for s, n in zip(norm, shape, strict=True))
        groups.setdefault(key, (norm, []))[1].append(dev)
    # Consecutive groups that share output rows reuse the reader's row cache.
    return [groups[k] for k in sorted(groups)]


def _leaf_shards(
    path: Path,
    plan: ParamPlan,
    read: RowReader,
    sharding: Any,
    dtype: Any,
    int8: bool,
    device_transpose: bool,
) -> Iterator[_Shard]:
    if int8 and plan.quantizable:
        q_groups = _groups(sharding.q, (plan.n_out, int(np.prod(plan.in_shape))))
        last: tuple[tuple[int, int], tuple[np.ndarray, np.ndarray]] | None = None
        for idx, devs in q_groups:
            rows = idx[0].indices(plan.n_out)[:2]
            if last is None or last[0] != rows:
                last = (rows, int8_rows(plan, read, *rows))
            yield _Shard(path, "q", devs, np.ascontiguousarray(last[1][0][:, idx[1]]))
        for idx, devs in _groups(sharding.scale, (plan.n_out,)):
            a, b = idx[0].indices(plan.n_out)[:2]
            # Scales are tiny, but recomputing them would re-read the rows: keep one block.
            if last is None or not (last[0][0] <= a and b <= last[0][1]):
                last = ((a, b), int8_rows(plan, read, a, b))
            lo = last[0][0]
            yield _Shard(path, "scale", devs, last[1][1][a - lo : b - lo].copy())
        return
    if staged(plan, device_transpose):
        rows_plan = dataclasses.replace(plan, kind="rows_first")
        for idx, devs in _groups(staging_sharding(plan, sharding), rows_plan.shape):
            yield _Shard(path, "w", devs, block(rows_plan, read, idx, None))
        return
    for idx, devs in _groups(sharding, plan.shape):
        yield _Shard(path, "w", devs, block(plan, read, idx, dtype))


def staged(plan: ParamPlan, device_transpose: bool) -> bool:
    """Whether a float parameter travels in row order and is transposed on device."""
    return device_transpose and plan.kind == "in_first"


def staging_sharding(plan: ParamPlan, target: NamedSharding) -> NamedSharding:
    """Sharding of the row-order [*out, *in] array whose transpose is `target`'s [*in, *out]."""
    n_in = len(plan.in_shape)
    spec = tuple(target.spec) + (None,) * (len(plan.shape) - len(target.spec))
    return NamedSharding(target.mesh, PartitionSpec(*spec[n_in:], *spec[:n_in]))


@lru_cache(maxsize=64)
def _to_layout(n_in: int, n_out: int, dtype: Any, target: NamedSharding) -> Any:
    """[*out, *in] (stored dtype) -> [*in, *out] in `dtype`, compiled once per shape class."""
    perm = (*range(n_out, n_out + n_in), *range(n_out))
    return jax.jit(lambda r: jnp.transpose(r, perm).astype(dtype), out_shardings=target)


@dataclass(frozen=True)
class StreamStats:
    """What a placement moved: bytes placed on devices (all copies) and read from the source."""

    placed_bytes: int
    shards: int


class StreamedWeights:
    """Weights of a Hugging Face checkpoint, placed shard by shard (see the module docstring).

    `read` returns HF rows in the stored dtype; `dtype`/`matrices` (float or int8) are what the
    engine will hold.
    `device_transpose` (default: on accelerators) sends matrices in row order and transposes
    them on the devices. On CPU the "devices" are this process's memory and cores, so the
    transposed copy would count twice and gain nothing: the host transposes instead.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        read: RowReader,
        dtype: Any,
        matrices: MatrixFormat,
        device_transpose: bool | None = None,
    ) -> None:
        check_sharded(matrices)
        self.cfg, self.read, self.dtype, self.matrices = cfg, read, np.dtype(dtype), matrices
        self.int8 = matrices == "int8"
        self._device_transpose = device_transpose
        self.plans = param_plans(cfg, matrices)
        self.last_stats: StreamStats | None = None

    def abstract(self) -> Params:
        return abstract_params(self.cfg, self.dtype, self.matrices)

    @property
    def device_transpose(self) -> bool:
        if self._device_transpose is None:
            return jax.devices()[0].platform != "cpu"
        return self._device_transpose

    @device_transpose.setter
    def device_transpose(self, on: bool) -> None:
        self._device_transpose = on

    def host(self) -> Params:
        """Whole host arrays (small models and references; the engine uses `place`)."""
        return build_tree(
            self.cfg, {p: host_leaf(pl, self.read, self.dtype, self.matrices) for p, pl in self.plans.items()}
        )

    def place(self, shardings: Params) -> Params:
        """Stream every parameter onto the devices of `shardings` (a tree like `abstract()`)."""
        flat = _flatten(shardings)
        q: queue.Queue[_Shard | BaseException | None] = queue.Queue(maxsize=QUEUE_DEPTH)
        stop = threading.Event()

        def produce() -> None:
            try:
                for path, plan in self.plans.items():
                    for shard in _leaf_shards(
                        path, plan, self.read, flat[path], self.dtype, self.int8, self.device_transpose
                    ):
                        while not stop.is_set():
                            try:
                                q.put(shard, timeout=0.1)
                                break
                            except queue.Full:
                                continue
                        if stop.is_set():
                            return
                q.put(None)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                q.put(exc)

        reader = threading.Thread(target=produce, name="weights-reader", daemon=True)
        reader.start()
        placed: dict[tuple[Path, str], dict[jax.Device, jax.Array]] = {}
        leaves: dict[Path, Any] = {}
        nbytes = shards = 0

        def finish(path: Path) -> None:  # a parameter's shards are all there: make its array
            leaves[path] = self._assemble(path, self.plans[path], flat[path], placed)

        current: Path | None = None
        try:
            while (item := q.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                if item.path != current:
                    if current is not None:
                        finish(current)
                    current = item.path
                for dev in item.devices:
                    placed.setdefault((item.path, item.part), {})[dev] = jax.device_put(item.data, dev)
                    nbytes += item.data.nbytes
                shards += 1
                del item  # the host copy goes as soon as its transfers are queued
            if current is not None:
                finish(current)
        finally:
            stop.set()
            reader.join()
        self.last_stats = StreamStats(placed_bytes=nbytes, shards=shards)
        return build_tree(self.cfg, leaves)

    def _assemble(
        self,
        path: Path,
        plan: ParamPlan,
        sharding: Any,
        placed: dict[tuple[Path, str], dict[jax.Device, jax.Array]],
    ) -> Any:
        def array(part: str, shape: tuple[int, ...], s: NamedSharding) -> jax.Array:
            by_dev = placed.pop((path, part))
            return jax.make_array_from_single_device_arrays(
                shape, s, [by_dev[d] for d in s.addressable_devices_indices_map(shape)]
            )

        if self.int8 and plan.quantizable:
            n_in = int(np.prod(plan.in_shape))
            return QInt8(
                q=array("q", (plan.n_out, n_in), sharding.q),
                scale=array("scale", (plan.n_out,), sharding.scale),
                in_shape=plan.in_shape,
                out_shape=plan.out_shape,
            )
        if staged(plan, self.device_transpose):
            rows = array("w", (*plan.out_shape, *plan.in_shape), staging_sharding(plan, sharding))
            fn = _to_layout(len(plan.in_shape), len(plan.out_shape), self.dtype, sharding)
            return fn(rows)  # the row-order copy is freed once the transpose has run
        return array("w", plan.shape, sharding)
