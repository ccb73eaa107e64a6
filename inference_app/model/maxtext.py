"""MaxText (Orbax) checkpoints, as the guide's "Creating inference checkpoints" makes them.

Where it sits: `loader.load_model` sends an Orbax directory here; `MaxTextWeights.place` restores
it with orbax-checkpoint straight into shardings derived from ours (each device, or under
Pathways each TPU worker, reads only its part), then converts MaxText's layout to ours on device,
one layer at a time, so no host copy of the model ever exists.

The layout is MaxText's own, taken from its source (AI-Hypercomputer/maxtext at
e591f30cbbf217ed67ef71263ec0538239f9c3b8): the converters
`checkpoint_conversion/standalone_scripts/llama_or_mistral_ckpt.py` and
`llama_ckpt_conversion_inference_only.py` (unscanned: one `layers_{i}` per layer), the Llama
decoder (`models/llama2.py`, `layers/decoders.py`: the logits matmul is never quantized),
`common/checkpointing.py` (`params/params/...` on disk; a quantized checkpoint saved as
`{"params": {"aqt": ..., "params": ...}}`) and AQT's `Freezer` (google/aqt at
9d1667ebde057f474cf8d2c80d4e52c5670d6c8a, `jax/v2/flax/aqt_flax.py`: `qrhs/value` int8 with the
kernel's shape, `qrhs/scale` transposed to the output order).

    params/params/token_embedder/embedding                     [V, D]
    params/params/decoder/decoder_norm/scale                   [D]
    params/params/decoder/logits_dense/kernel                  [D, V]   (absent when tied)
    params/params/decoder/layers_{i}/pre_self_attention_layer_norm/scale    [D]
    params/params/decoder/layers_{i}/post_self_attention_layer_norm/scale   [D]
    params/params/decoder/layers_{i}/self_attention/query/kernel   [D, H, Dh]  (/ sqrt(Dh))
    params/params/decoder/layers_{i}/self_attention/key/kernel     [D, K, Dh]
    params/params/decoder/layers_{i}/self_attention/value/kernel   [D, K, Dh]
    params/params/decoder/layers_{i}/self_attention/out/kernel     [H, Dh, D]
    params/params/decoder/layers_{i}/mlp/wi_0/kernel   [D, F]  (gate)
    params/params/decoder/layers_{i}/mlp/wi_1/kernel   [D, F]  (up)
    params/params/decoder/layers_{i}/mlp/wo/kernel     [F, D]
    int8 (checkpoint_is_quantized=true): each kernel above except the logits moves to
    params/aqt/decoder/layers_{i}/<module>/AqtDotGeneral_0/qrhs/{value [kernel shape] int8,
                                                              scale [1, 1, *out dims]}

Q/K rows are in Meta's adjacent-pair RoPE order for names starting with "llama3.1" and in the
rotate-halves order otherwise (`catalog.py`); we store rotate-halves.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import fsspec
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from inference_app.model.catalog import Architecture, architecture
from inference_app.model.config import ModelConfig
from inference_app.model.tokenizer import TextTokenizer
from inference_app.model.transformer import Params, QInt8
from inference_app.model.weights import MatrixFormat, abstract_params, check_sharded
from inference_app.model.weights_hf import tokenizer_from_dir

log = logging.getLogger(__name__)

# Files Orbax writes at the top of a PyTree checkpoint directory (the guide's `.../0/items`).
_ORBAX_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt")
_MODULES = {  # our param -> MaxText modules under layers_{i}, in our concatenation order
    "wqkv": ("self_attention/query", "self_attention/key", "self_attention/value"),
    "wo": ("self_attention/out",),
    "w_gate_up": ("mlp/wi_0", "mlp/wi_1"),
    "w_down": ("mlp/wo",),
}


# For each MaxText kernel dim, the dim of our target array it follows when restoring (None: not
# split), for a float target [*in, *out] and for an int8 target q [out, in]. q/k/v heads [H]
# follow our KV-head dim (H = K * G, grouped by KV head, so the splits line up).
_FOLLOW: dict[str, tuple[tuple[int | None, ...], tuple[int | None, ...]]] = {
    "self_attention/query": ((0, 1, None), (1, 0, None)),
    "self_attention/key": ((0, 1, None), (1, 0, None)),
    "self_attention/value": ((0, 1, None), (1, 0, None)),
    "self_attention/out": ((0, None, 3), (1, None, 0)),
    "mlp/wi_0": ((0, 2), (1, 0)),
    "mlp/wi_1": ((0, 2), (1, 0)),
    "mlp/wo": ((0, 1), (1, 0)),
}


class MaxTextCheckpointError(ValueError):
    """The checkpoint is not an unscanned MaxText Llama checkpoint of the named architecture."""


def is_orbax_checkpoint(path: str) -> bool:
    if path.endswith(".gguf"):
        return False
    fs, root = fsspec.core.url_to_fs(path)
    return any(fs.exists(root.rstrip("/") + "/" + m) for m in _ORBAX_MARKERS)


def uses_ocdbt(path: str) -> bool:
    fs, root = fsspec.core.url_to_fs(path)
    return bool(fs.exists(root.rstrip("/") + "/manifest.ocdbt"))


# ---- where the bytes are read: the decision, kept pure so it is tested here ----------------

Route = Literal["client", "pathways-persistence"]


def restore_route(path: str, platforms: str, environ: Mapping[str, str], ocdbt: bool) -> Route:
    """Who reads the checkpoint: this process ("client"), or under Pathways the TPU workers.

    Under Pathways (`JAX_PLATFORMS=proxy`) this process is the single controller; restoring
    through it would funnel every byte through the leader pod. With
    `ENABLE_PATHWAYS_PERSISTENCE=1`, `pathwaysutils.initialize()` registers its Orbax array
    handler so the workers read their shards from GCS themselves. That handler needs a gs://
    path and a checkpoint written without OCDBT (MaxText `checkpoint_storage_use_ocdbt=false`).
    """
    if "proxy" not in platforms.split(","):
        return "client"
    flag = environ.get("ENABLE_PATHWAYS_PERSISTENCE", "")
    if flag != "1":
        log.warning(
            "Pathways without ENABLE_PATHWAYS_PERSISTENCE=1: the checkpoint is read by this process "
            "and sent to the TPU workers through the proxy; set it so the workers read from GCS."
        )
        return "client"
    if not path.startswith("gs://"):
        raise MaxTextCheckpointError(
            f"{path}: with ENABLE_PATHWAYS_PERSISTENCE=1 the TPU workers read the checkpoint, so it "
            "must be a gs:// path they can reach (or unset ENABLE_PATHWAYS_PERSISTENCE)"
        )
    if ocdbt:
        raise MaxTextCheckpointError(
            f"{path}: this checkpoint uses OCDBT (manifest.ocdbt), which the Pathways persistence "
            "handler cannot read; re-save it with MaxText's checkpoint_storage_use_ocdbt=false "
            "checkpoint_storage_use_zarr3=false, or set ENABLE_PATHWAYS_PERSISTENCE=0 to read it "
            "through this process"
        )
    return "pathways-persistence"


# ---- the tree on disk ------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeInfo:
    """What the checkpoint holds: leaf paths ('a/b/c') -> (shape, dtype)."""

    leaves: dict[str, tuple[tuple[int, ...], np.dtype]]

    @property
    def quantized(self) -> bool:
        return any(k.startswith("params/aqt/") for k in self.leaves)

    @property
    def scanned(self) -> bool:
        return any(k.startswith("params/params/decoder/layers/") for k in self.leaves)

    def kernel(self, i: int, module: str) -> tuple[str, ...]:
        """Leaf paths of one layer's kernel: ('.../kernel',) or (qrhs value, qrhs scale)."""
        float_path = f"params/params/decoder/layers_{i}/{module}/kernel"
        if float_path in self.leaves:
            return (float_path,)
        base = f"params/aqt/decoder/layers_{i}/{module}/AqtDotGeneral_0/qrhs/"
        if base + "value" in self.leaves:
            return (base + "value", base + "scale")
        raise MaxTextCheckpointError(f"checkpoint has no {float_path} (nor its AQT int8 form)")


def read_tree(ckptr: Any, path: str) -> TreeInfo:
    meta = ckptr.metadata(path)
    tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for keypath, m in jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]:
        if hasattr(m, "shape"):
            name = "/".join(str(getattr(k, "key", k)) for k in keypath)
            out[name] = (tuple(m.shape), np.dtype(m.dtype))
    return TreeInfo(out)


def check_tree(info: TreeInfo, cfg: ModelConfig, name: str) -> None:
    """Clear errors for a scanned checkpoint or one of another size than `--model` says."""
    if info.scanned:
        raise MaxTextCheckpointError(
            "this is a scanned MaxText checkpoint (decoder/layers stacked); serve an unscanned one "
            "(MaxText generate_param_only_checkpoint.py with force_unroll=true, or "
            "llama_ckpt_conversion_inference_only.py), as the guide's inference checkpoints are"
        )
    d, h, k, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    expect = {
        "params/params/token_embedder/embedding": (cfg.vocab_size, d),
        f"params/params/decoder/layers_{cfg.num_layers - 1}/pre_self_attention_layer_norm/scale": (d,),
    }
    q = info.kernel(0, "self_attention/query")[0]
    expect[q] = (d, h, hd)
    expect[info.kernel(0, "self_attention/key")[0]] = (d, k, hd)
    expect[info.kernel(0, "mlp/wo")[0]] = (cfg.ffn_size, d)
    for leaf, shape in expect.items():
        got = info.leaves.get(leaf, (None,))[0]
        if got != shape:
            raise MaxTextCheckpointError(
                f"{leaf}: expected shape {shape} for --model {name}, checkpoint has {got}"
            )
    if f"params/params/decoder/layers_{cfg.num_layers}/pre_self_attention_layer_norm/scale" in info.leaves:
        raise MaxTextCheckpointError(
            f"checkpoint has more than the {cfg.num_layers} layers of --model {name}"
        )


# ---- MaxText layout -> ours (pure jnp, run on device) -----------------------------------------


def _unrope(x: jax.Array, interleaved: bool) -> jax.Array:
    """Adjacent rotary pairs (2j, 2j+1) -> rotate-halves (j, j + Dh/2) on the last axis."""
    return jnp.concatenate([x[..., ::2], x[..., 1::2]], axis=-1) if interleaved else x


def quantize_rows(w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-row symmetric int8 of w [out, in], the math of `transformer.quantize_int8` on device.

    XLA's float division is not always correctly rounded (XLA:CPU measured 1 ulp off numpy on
    some scales), so a value sitting on a rounding tie may land one step off the host result.
    """
    w32 = w.astype(jnp.float32)
    amax = jnp.max(jnp.abs(w32), axis=1, keepdims=True)
    scale = jnp.where(amax > 0, amax / 127.0, 1.0)
    q = jnp.clip(jnp.round(w32 / scale), -127, 127).astype(jnp.int8)
    return q, scale[:, 0]


@partial(jax.tree_util.register_dataclass, data_fields=["w", "q", "scale"], meta_fields=[])
@dataclass(frozen=True)
class _Kernel:
    """One MaxText kernel as restored: float `w`, or AQT int8 `q` with `scale` (output order)."""

    w: jax.Array | None = None
    q: jax.Array | None = None
    scale: jax.Array | None = None

    def out_major(self, n_in_dims: int) -> tuple[jax.Array, jax.Array | None]:
        """(matrix [out..., in] with in dims flattened last, scale [out...] or None)."""
        src = self.w if self.q is None else self.q
        assert src is not None
        n_in = math.prod(src.shape[:n_in_dims])
        out_shape = src.shape[n_in_dims:]
        m = src.reshape(n_in, -1).T.reshape(*out_shape, n_in)
        scale = None if self.scale is None else self.scale.reshape(out_shape).astype(jnp.float32)
        return m, scale


def _combine(
    parts: list[tuple[jax.Array, jax.Array | None]],
    dtype: Any,
    int8: bool,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
) -> Any:
    """Out-major pieces (already in our channel order) -> our float array or QInt8."""
    n_in = math.prod(in_shape)
    mats = [m.reshape(-1, n_in) for m, _ in parts]
    quantized = parts[0][1] is not None
    if quantized:
        scales = [s.reshape(-1) for _, s in parts if s is not None]
        q, scale = jnp.concatenate(mats), jnp.concatenate(scales)
        if int8:
            return QInt8(q=q, scale=scale, in_shape=in_shape, out_shape=out_shape)
        w = q.astype(jnp.float32) * scale[:, None]
    else:
        w = jnp.concatenate(mats)
        if int8:
            q, scale = quantize_rows(w)
            return QInt8(q=q, scale=scale, in_shape=in_shape, out_shape=out_shape)
    return w.T.reshape(*in_shape, *out_shape).astype(dtype)


def convert_layer(
    k: dict[str, _Kernel],
    norms: tuple[jax.Array, jax.Array],
    cfg: ModelConfig,
    arch_interleaved: bool,
    dtype: Any,
    int8: bool,
) -> dict[str, Any]:
    """One MaxText layer -> our layer dict (float arrays or QInt8), see the module docstring."""
    kv, g, hd, d, f = cfg.num_kv_heads, cfg.group_size, cfg.head_dim, cfg.hidden_size, cfg.ffn_size
    q_m, q_s = k["self_attention/query"].out_major(1)  # [H, Dh, D]
    k_m, k_s = k["self_attention/key"].out_major(1)  # [K, Dh, D]
    v_m, v_s = k["self_attention/value"].out_major(1)
    # MaxText folds 1/sqrt(Dh) into the query kernel; undo it (on the scale when int8).
    root = np.float32(math.sqrt(hd))

    def rope(m: jax.Array, s: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
        m = jnp.swapaxes(_unrope(jnp.swapaxes(m, -1, -2), arch_interleaved), -1, -2)  # Dh is axis -2
        return m, None if s is None else _unrope(s, arch_interleaved)

    q_m, q_s = rope(q_m, q_s)
    k_m, k_s = rope(k_m, k_s)
    if q_s is None:
        q_m = q_m.astype(jnp.float32) * root
    else:
        q_s = q_s * root
    heads = [
        (q_m.reshape(kv, g, hd, d), None if q_s is None else q_s.reshape(kv, g, hd)),
        (k_m.reshape(kv, 1, hd, d), None if k_s is None else k_s.reshape(kv, 1, hd)),
        (v_m.reshape(kv, 1, hd, d), None if v_s is None else v_s.reshape(kv, 1, hd)),
    ]
    m = jnp.concatenate([x.astype(jnp.float32) if q_s is None else x for x, _ in heads], axis=1)
    s = None if q_s is None else jnp.concatenate([x for _, x in heads if x is not None], axis=1)
    layer = {
        "attn_norm": norms[0].astype(dtype),
        "mlp_norm": norms[1].astype(dtype),
        "wqkv": _combine([(m, s)], dtype, int8, (d,), (kv, g + 2, hd)),
        "wo": _combine([k["self_attention/out"].out_major(2)], dtype, int8, (kv, g, hd), (d,)),
        "w_gate_up": _combine(
            [k["mlp/wi_0"].out_major(1), k["mlp/wi_1"].out_major(1)], dtype, int8, (d,), (2, f)
        ),
        "w_down": _combine([k["mlp/wo"].out_major(1)], dtype, int8, (f,), (d,)),
    }
    return layer


def convert_top(
    embedding: jax.Array, norm: jax.Array, logits: jax.Array | None, dtype: Any, int8: bool
) -> dict[str, Any]:
    """Embedding, final norm and LM head (MaxText never quantizes these)."""
    v, d = embedding.shape
    out: dict[str, Any] = {"final_norm": norm.astype(dtype)}
    if int8:
        q, scale = quantize_rows(embedding)
        out["embed"] = QInt8(q=q, scale=scale, in_shape=(d,), out_shape=(v,))
        if logits is not None:
            q, scale = quantize_rows(logits.T)
            out["lm_head"] = QInt8(q=q, scale=scale, in_shape=(d,), out_shape=(v,))
        return out
    out["embed"] = embedding.astype(dtype)
    out["lm_head"] = (embedding.T if logits is None else logits).astype(dtype)
    return out


# ---- restore -----------------------------------------------------------------------------------


def _spec_like(target: NamedSharding, dims: tuple[int | None, ...], shape: tuple[int, ...]) -> NamedSharding:
    """A sharding for a MaxText leaf whose dim j follows our target's dim dims[j] (None: whole),
    kept only where it divides the leaf's dim (so each device reads about what it will hold)."""
    spec = tuple(target.spec) + (None,) * 8
    mesh = target.mesh
    out: list[Any] = []
    for j, src in enumerate(dims):
        axes = None if src is None else spec[src]
        if axes is not None:
            names = (axes,) if isinstance(axes, str) else tuple(axes)
            if shape[j] % math.prod(mesh.shape[a] for a in names):
                axes = None
        out.append(axes)
    return NamedSharding(mesh, PartitionSpec(*out))


class MaxTextWeights:
    """A MaxText checkpoint, restored into our layout and shardings (see the module docstring)."""

    def __init__(
        self, path: str, arch: Architecture, name: str, dtype: Any, matrices: MatrixFormat, route: Route
    ) -> None:
        import orbax.checkpoint as ocp

        self.path, self.arch, self.cfg = path, arch, arch.config
        check_sharded(matrices)
        self.dtype, self.matrices, self.route = np.dtype(dtype), matrices, route
        self.int8 = matrices == "int8"
        self.ckptr = ocp.PyTreeCheckpointer()
        self.info = read_tree(self.ckptr, path)
        check_tree(self.info, self.cfg, name)
        self.tied = "params/params/decoder/logits_dense/kernel" not in self.info.leaves

    def abstract(self) -> Params:
        return abstract_params(dataclass_replace_tied(self.cfg, self.tied), self.dtype, self.matrices)

    def host(self) -> Params:
        cpu = jax.devices("cpu")[:1]
        from jax.sharding import Mesh

        mesh = Mesh(np.asarray(cpu).reshape(1, 1, 1), ("fsdp", "autoregressive", "tensor"))
        rep = NamedSharding(mesh, PartitionSpec())
        placed = self.place(jax.tree.map(lambda _: rep, self.abstract()))
        return jax.tree.map(np.asarray, placed)

    def _restore(self, want: dict[str, NamedSharding]) -> dict[str, jax.Array]:
        """Restore only the named leaves, each straight into its sharding (the one Orbax call;
        under Pathways persistence the handler pathwaysutils registered makes it a worker read)."""
        import orbax.checkpoint as ocp

        tree: dict[str, Any] = {}
        for leaf, sharding in want.items():
            shape, dtype = self.info.leaves[leaf]
            node = tree
            *parents, last = leaf.split("/")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
        args = ocp.args.PyTreeRestore(
            item=tree, restore_args=ocp.checkpoint_utils.construct_restore_args(tree), partial_restore=True
        )
        restored = self.ckptr.restore(self.path, args=args)
        out = {}
        for leaf in want:
            node = restored
            for p in leaf.split("/"):
                node = node[p]
            out[leaf] = node
        return out

    def place(self, shardings: Params) -> Params:
        cfg, dtype, int8 = self.cfg, self.dtype, self.int8
        layers = []
        # Every layer has the same shapes and shardings: one compiled conversion serves them all.
        convert_one = jax.jit(
            convert_layer, static_argnums=(2, 3, 4, 5), out_shardings=shardings["layers"][0]
        )
        for i in range(cfg.num_layers):
            target = shardings["layers"][i]
            want: dict[str, NamedSharding] = {}
            for ours, modules in _MODULES.items():
                for module in modules:
                    for leaf in self.info.kernel(i, module):
                        want[leaf] = self._leaf_sharding(leaf, module, target[ours])
            norms = [
                f"params/params/decoder/layers_{i}/{n}_self_attention_layer_norm/scale"
                for n in ("pre", "post")
            ]
            for n in norms:
                want[n] = target["attn_norm"]
            got = self._restore(want)
            kernels = {
                module: self._kernel(got, self.info.kernel(i, module))
                for mods in _MODULES.values()
                for module in mods
            }
            layers.append(
                convert_one(
                    kernels, (got[norms[0]], got[norms[1]]), cfg, self.arch.rope_interleaved, dtype, int8
                )
            )
            del got, kernels
        top = {k: v for k, v in shardings.items() if k != "layers"}
        emb_t = top["embed"].q if isinstance(top["embed"], QInt8) else top["embed"]
        want = {
            "params/params/token_embedder/embedding": _spec_like(
                emb_t, (0, 1), self.info.leaves["params/params/token_embedder/embedding"][0]
            ),
            "params/params/decoder/decoder_norm/scale": top["final_norm"],
        }
        if not self.tied:
            lm = top["lm_head"]
            leaf = "params/params/decoder/logits_dense/kernel"
            dims = (1, 0) if isinstance(lm, QInt8) else (0, 1)
            want[leaf] = _spec_like(lm.q if isinstance(lm, QInt8) else lm, dims, self.info.leaves[leaf][0])
        got = self._restore(want)
        convert = jax.jit(convert_top, static_argnums=(3, 4), out_shardings=top)
        params = convert(
            got["params/params/token_embedder/embedding"],
            got["params/params/decoder/decoder_norm/scale"],
            got.get("params/params/decoder/logits_dense/kernel"),
            dtype,
            int8,
        )
        params["layers"] = layers
        return params

    @staticmethod
    def _kernel(got: dict[str, jax.Array], leaves: tuple[str, ...]) -> _Kernel:
        if len(leaves) == 1:
            return _Kernel(w=got[leaves[0]])
        return _Kernel(q=got[leaves[0]], scale=got[leaves[1]])

    def _leaf_sharding(self, leaf: str, module: str, target: Any) -> NamedSharding:
        """Restore sharding of one MaxText kernel leaf, following our target's split dims."""
        quantized = isinstance(target, QInt8)
        t = target.q if quantized else target
        if leaf.endswith("/scale"):  # AQT scales [1, 1, *out]: small, replicated
            return NamedSharding(t.mesh, PartitionSpec())
        return _spec_like(t, _FOLLOW[module][int(quantized)], self.info.leaves[leaf][0])


def dataclass_replace_tied(cfg: ModelConfig, tied: bool) -> ModelConfig:
    return dataclasses.replace(cfg, tie_embeddings=tied)


def load(
    path: str,
    dtype: Any,
    matrices: MatrixFormat,
    *,
    model_name: str | None,
    tokenizer_path: str | None,
    environ: Mapping[str, str] | None = None,
    platforms: str | None = None,
    arch: Architecture | None = None,
) -> tuple[ModelConfig, MaxTextWeights, TextTokenizer]:
    """Open a MaxText checkpoint: architecture from the catalog, tokenizer from `tokenizer_path`."""
    if arch is None:
        arch = architecture(
            model_name,
            f"{path} is a MaxText (Orbax) checkpoint, which carries no model config: "
            "name its architecture with --model",
        )
    if tokenizer_path is None:
        raise MaxTextCheckpointError(
            f"{path} is a MaxText checkpoint, which carries no tokenizer: pass --tokenizer-path with a "
            "Hugging Face directory (or tokenizer.json) of the same model"
        )
    env = os.environ if environ is None else environ
    plats = env.get("JAX_PLATFORMS", "") if platforms is None else platforms
    route = restore_route(path, plats, env, uses_ocdbt(path))
    weights = MaxTextWeights(path, arch, model_name or "(given)", dtype, matrices, route)
    cfg = dataclass_replace_tied(arch.config, weights.tied)
    return cfg, weights, tokenizer_from_dir(tokenizer_path)
