"""Meshes and partition specs (MaxText axis names: fsdp x autoregressive x tensor).

Heads, MLP columns and the vocabulary are split over the model-parallel axes
(tensor, autoregressive); the embedding dim of weights over fsdp; KV-cache slots over fsdp and
KV heads over the model-parallel axes. A dimension that a mesh axis does not divide evenly stays
unsplit on that axis (SmolLM2's 3 KV heads on tensor=4, say): GSPMD keeps the math identical
whichever axes end up used, only the communication pattern changes. The engine builds its
prefill and generate meshes here and places parameters and the KV cache with these specs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from inference_app.model.quant import BlockQuant
from inference_app.model.transformer import QInt8
from inference_app.model.weights import IN_DIMS

AXES = ("fsdp", "autoregressive", "tensor")
MODEL = ("tensor", "autoregressive")  # model-parallel axes, in order of preference
FSDP = ("fsdp",)

# Logical placement per parameter (one entry per array dim; None = replicated along it).
_PARAM_AXES: dict[str, tuple[tuple[str, ...] | None, ...]] = {
    "embed": (MODEL, FSDP),  # [V, D]
    "lm_head": (FSDP, MODEL),  # [D, V]
    "wqkv": (FSDP, MODEL, None, None),  # [D, K, G+2, Dh]
    "wo": (MODEL, None, None, FSDP),  # [K, G, Dh, D]
    "w_gate_up": (FSDP, None, MODEL),  # [D, 2, F]
    "w_down": (MODEL, FSDP),  # [F, D]
}
_CACHE_AXES = (FSDP, MODEL, None, None)  # [B, K, T, Dh]


def make_mesh(devices: Sequence[jax.Device], fsdp: int, autoregressive: int, tensor: int) -> Mesh:
    """A 3-axis mesh over `devices`; one size may be -1 to take the remaining devices."""
    sizes = [fsdp, autoregressive, tensor]
    n = len(devices)
    names = ("ici_fsdp_parallelism", "ici_autoregressive_parallelism", "ici_tensor_parallelism")
    if sum(1 for s in sizes if s == -1) > 1:
        raise ValueError(f"at most one of {', '.join(names)} may be -1")
    for name, s in zip(names, sizes, strict=True):
        if s == 0 or s < -1:
            raise ValueError(f"{name} must be a positive integer or -1, got {s}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n % known:
            raise ValueError(
                f"{n} devices are not divisible by the fixed mesh axes ({known}); fix {', '.join(names)}"
            )
        sizes[sizes.index(-1)] = n // known
    if math.prod(sizes) != n:
        raise ValueError(
            f"mesh {dict(zip(AXES, sizes, strict=True))} needs {math.prod(sizes)} devices "
            f"but {n} are available; "
            f"set {', '.join(names)} so their product is {n} (or use -1)"
        )
    return Mesh(np.asarray(devices).reshape(sizes), AXES)


def _spec(mesh: Mesh, shape: Sequence[int], logical: Sequence[tuple[str, ...] | None]) -> PartitionSpec:
    """Use, per dim, the largest prefix-free subset of its axes that divides the dim evenly."""
    out: list[Any] = []
    used: set[str] = set()
    for size, axes in zip(shape, logical, strict=True):
        chosen: list[str] = []
        prod = 1
        for ax in axes or ():
            n = mesh.shape[ax]
            if n > 1 and ax not in used and size % (prod * n) == 0:
                chosen.append(ax)
                prod *= n
        used.update(chosen)
        out.append(None if not chosen else (chosen[0] if len(chosen) == 1 else tuple(chosen)))
    return PartitionSpec(*out)


def param_shardings(mesh: Mesh, params: Any) -> Any:
    """A pytree of NamedShardings matching `params` (layers, QInt8 and BlockQuant leaves included)."""

    def leaf(name: str, w: Any) -> Any:
        if not isinstance(w, QInt8 | BlockQuant):
            logical = _PARAM_AXES.get(name, (None,) * np.ndim(w))
            return NamedSharding(mesh, _spec(mesh, np.shape(w), logical))
        # quantized matrices are stored [out, in], flattened
        in_axes: tuple[str, ...] | None
        out_axes: tuple[str, ...] | None
        if name == "embed":
            in_axes, out_axes = FSDP, MODEL
        else:
            in_axes, out_axes = _PARAM_AXES[name][0], _PARAM_AXES[name][IN_DIMS[name]]
        if isinstance(w, BlockQuant):  # qs, d and m all run [out, blocks of in]

            def blocks(a: Any) -> NamedSharding | None:
                return None if a is None else NamedSharding(mesh, _spec(mesh, a.shape, (out_axes, in_axes)))

            return BlockQuant(
                qs=blocks(w.qs),
                d=blocks(w.d),
                m=blocks(w.m),
                fmt=w.fmt,
                in_shape=w.in_shape,
                out_shape=w.out_shape,
            )
        return QInt8(
            q=NamedSharding(mesh, _spec(mesh, w.q.shape, (out_axes, in_axes))),
            scale=NamedSharding(mesh, _spec(mesh, w.scale.shape, (out_axes,))),
            in_shape=w.in_shape,
            out_shape=w.out_shape,
        )

    out = {k: leaf(k, v) for k, v in params.items() if k != "layers"}
    out["layers"] = [{k: leaf(k, v) for k, v in layer.items()} for layer in params["layers"]]
    return out


def cache_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
    """Sharding of one KV array [B, K, T, Dh] (or its scales [B, K, T])."""
    return NamedSharding(mesh, _spec(mesh, shape, _CACHE_AXES[: len(shape)]))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
