"""The JAX engine: prefill / transfer / insert / generate / release over a slot-based KV cache.

One request's life: `prefill` pads the prompt to a compiled bucket, runs it on the prefill mesh
and samples the first token; `transfer` moves the prompt's KV to the generate mesh (identity
when both stages share devices); `insert` writes that KV into a free slot of the preallocated
cache (donated, updated in place); every `generate` call advances all slots by one token, each at
its own position, attending only to a bucketed prefix of the cache; `release` frees the slot.

Threads: `prefill`/`transfer` touch only the prefill parameters and may run on their own thread
(disaggregated serving does); `insert`, `generate` and `release` share the slot state and must
be called from one thread.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from inference_app.engine import sampling
from inference_app.engine.api import Prefix, SamplingParams, StepOutput
from inference_app.engine.settings import EngineSettings
from inference_app.engine.sharding import cache_sharding, make_mesh, param_shardings, replicated
from inference_app.engine.step_plan import PendingPrompt, plan_step, step_row_buckets
from inference_app.kernels import build as kernel_build
from inference_app.kernels import ops as cpu_kernels
from inference_app.model.catalog import embedded_model_path
from inference_app.model.config import ModelConfig
from inference_app.model.loader import LoadedModel, load_model
from inference_app.model.tokenizer import TextTokenizer
from inference_app.model.transformer import (
    LayerKV,
    Params,
    decode_forward,
    prefill_forward,
    quantize_kv,
    ragged_forward,
)

log = logging.getLogger(__name__)

MIN_PREFILL_BUCKET = 32
MIN_ATTENTION_BUCKET = 128
# Batched prefill pads every prompt to the batch's bucket and the batch to a power of two rows;
# this caps rows x bucket, so only short-prompt buckets batch (long ones are big matmuls already).
PREFILL_BATCH_TOKENS = 512
# Decode steps compute only the first `rows` slots (a bucket covering every active slot; the
# orchestrator fills the lowest free slot first), so a lone request on a 32-slot server pays for
# a 1-row step, not a 32-row one. Buckets grow by this factor to bound the number of compiles.
ROW_BUCKET_GROWTH = 4

# XLA:CPU compiler options for int8-weight engines. YNNPACK dot fusions run the int8-weight
# matrix-vector products (which XLA's own loop emitter handles at only the fp32 rate) through
# XNNPACK's YNN kernels; fp32 runs as fast without them and keeps row-bucketed decode steps.
# Passed per jit (not via XLA_FLAGS), so they apply regardless of when jax was imported and form
# part of the compilation-cache key.
CPU_COMPILER_OPTIONS: dict[str, str] = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


def buckets(smallest: int, largest: int) -> tuple[int, ...]:
    """Powers of two from `smallest` (capped at `largest`), always ending with `largest`."""
    out = []
    b = smallest
    while b < largest:
        out.append(b)
        b *= 2
    out.append(largest)
    return tuple(out)


def row_buckets(smallest: int, largest: int) -> tuple[int, ...]:
    """`smallest` x ROW_BUCKET_GROWTH^i below `largest`, always ending with `largest`."""
    out = []
    b = smallest
    while b < largest:
        out.append(b)
        b *= ROW_BUCKET_GROWTH
    out.append(largest)
    return tuple(out)


def resolve_dtypes(settings: EngineSettings, platform: str) -> tuple[Any, Any, bool]:
    """(compute dtype, KV dtype, int8 weights) for a platform; `auto` is fp32 on CPU, bf16 elsewhere.

    An `auto` KV cache follows the compute dtype, except on CPU where it stays float32: the CPU
    attention kernel reads float32, and a bf16 cache would save memory, not time.
    """
    auto = jnp.float32 if platform == "cpu" else jnp.bfloat16
    w = settings.weight_dtype
    compute = auto if w in ("auto", "int8") else jnp.dtype(w).type
    kv_auto = jnp.float32 if platform == "cpu" else compute
    kv = kv_auto if settings.kv_dtype == "auto" else jnp.dtype(settings.kv_dtype).type
    return compute, kv, w == "int8"


def enable_compilation_cache(path: str | None) -> None:
    """Persist compiled executables across processes (startup drops from compile to load time)."""
    if not path:
        return
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def validate_settings(s: EngineSettings) -> None:
    if (s.model is None) == (s.model_path is None):
        raise ValueError(
            "set exactly one of EngineSettings.model (catalog name) or EngineSettings.model_path"
        )
    if s.max_slots < 1:
        raise ValueError(f"EngineSettings.max_slots must be >= 1, got {s.max_slots}")
    if s.max_prefill_length < 1:
        raise ValueError(f"EngineSettings.max_prefill_length must be >= 1, got {s.max_prefill_length}")
    if s.max_target_length <= s.max_prefill_length:
        raise ValueError(
            f"EngineSettings.max_target_length ({s.max_target_length}) must exceed "
            f"max_prefill_length ({s.max_prefill_length}) so that at least one token can be generated"
        )
    if s.max_prefill_batch < 1:
        raise ValueError(f"EngineSettings.max_prefill_batch must be >= 1, got {s.max_prefill_batch}")
    if s.max_step_tokens < 1:
        raise ValueError(f"EngineSettings.max_step_tokens must be >= 1, got {s.max_step_tokens}")
    if s.mode not in ("interleaved", "disaggregated"):
        raise ValueError(f"EngineSettings.mode must be 'interleaved' or 'disaggregated', got {s.mode!r}")


class JaxEngine:
    """Implements `inference_app.engine.api.Engine` for Llama-family models."""

    def __init__(
        self,
        settings: EngineSettings,
        model: LoadedModel,
        devices: Sequence[jax.Device] | None = None,
    ) -> None:
        validate_settings(settings)
        self.settings = settings
        self.config: ModelConfig = model.config
        self.tokenizer: TextTokenizer = model.tokenizer
        devices = list(devices if devices is not None else jax.devices())
        self.compute_dtype, self.kv_dtype, self.int8_weights = resolve_dtypes(settings, devices[0].platform)
        s = settings
        if s.mode == "disaggregated":
            if len(devices) < 2 or len(devices) % 2:
                raise ValueError(
                    f"mode 'disaggregated' needs an even number (>= 2) of devices, found {len(devices)}"
                )
            half = len(devices) // 2
            prefill_devices, generate_devices = devices[:half], devices[half:]
        else:
            prefill_devices = generate_devices = devices
        axes = (s.ici_fsdp_parallelism, s.ici_autoregressive_parallelism, s.ici_tensor_parallelism)
        self.prefill_mesh: Mesh = make_mesh(prefill_devices, *axes)
        self.generate_mesh: Mesh = (
            self.prefill_mesh if prefill_devices is generate_devices else make_mesh(generate_devices, *axes)
        )
        self.prefill_buckets = buckets(min(MIN_PREFILL_BUCKET, s.max_prefill_length), s.max_prefill_length)
        # Native decode kernels: single CPU device only (they know nothing of sharding).
        self.use_cpu_kernels = (
            s.cpu_kernels
            and devices[0].platform == "cpu"
            and self.generate_mesh.size == 1
            and jnp.dtype(self.compute_dtype) in (jnp.float32, jnp.bfloat16)
            and kernel_build.available()
        )
        # The attention kernel reads each slot only up to its own position, so one compiled
        # attention length serves every step.
        self.attention_buckets = (
            (s.max_target_length,)
            if self.use_cpu_kernels and jnp.dtype(self.kv_dtype) == jnp.float32
            else buckets(min(MIN_ATTENTION_BUCKET, s.max_target_length), s.max_target_length)
        )

        self.prefill_params: Params = jax.device_put(
            model.params, param_shardings(self.prefill_mesh, model.params)
        )
        if self.generate_mesh is self.prefill_mesh:
            self.generate_params = self.prefill_params
        else:
            self.generate_params = jax.device_put(
                model.params, param_shardings(self.generate_mesh, model.params)
            )
        self._cache = self._allocate_cache()
        self._cache_shardings = jax.tree.map(lambda a: a.sharding, self._cache)
        # The smallest row bucket spans one slot per shard of the cache's slot dimension.
        slot_axes = cache_sharding(self.generate_mesh, self._cache[0]["k"].shape).spec[0]
        if slot_axes is None:
            slot_axes = ()
        elif isinstance(slot_axes, str):
            slot_axes = (slot_axes,)
        slot_shards = int(np.prod([self.generate_mesh.shape[a] for a in slot_axes]))
        # YNNPACK dots (int8 weights on CPU, below) first copy a sliced cache: there, every step
        # keeps all rows (measured, 32-slot cache, 1 active: 164 ms/step sliced vs 105 ms full).
        self.ynn_dots = devices[0].platform == "cpu" and self.int8_weights
        # (With the attention kernel no sliced cache is ever copied: row buckets stay on.)
        self.row_buckets = (
            (s.max_slots,)
            if self.ynn_dots and not self.use_cpu_kernels
            else row_buckets(slot_shards, s.max_slots)
        )
        rep = replicated(self.generate_mesh)
        self._rep = rep
        b = s.max_slots
        self._tokens = jax.device_put(np.zeros(b, np.int32), rep)
        self._positions = np.zeros(b, np.int32)
        self._temperature = np.zeros(b, np.float32)
        self._top_k = np.zeros(b, np.int32)
        self._top_p = np.ones(b, np.float32)
        self._seeds = np.zeros(b, np.uint32)
        self._active: set[int] = set()
        self._rng = np.random.default_rng()
        self.compiler_options = dict(CPU_COMPILER_OPTIONS) if self.ynn_dots else {}
        # Chunked prefill runs prompts inside the decode steps through the ragged attention
        # kernel, so it needs what that kernel needs.
        self.chunked_prefill = (
            s.chunked_prefill
            and s.mode == "interleaved"
            and self.use_cpu_kernels
            and jnp.dtype(self.kv_dtype) == jnp.float32
        )
        self.step_buckets = step_row_buckets(s.max_slots, max(s.max_step_tokens, s.max_slots))
        self._pending: dict[int, PendingPrompt] = {}  # slot -> prompt being prefilled, FIFO
        self._build_functions()

    # ---- construction helpers ------------------------------------------------------------

    def _allocate_cache(self) -> list[LayerKV]:
        cfg, s = self.config, self.settings
        shape = (s.max_slots, cfg.num_kv_heads, s.max_target_length, cfg.head_dim)
        mesh = self.generate_mesh
        int8 = jnp.dtype(self.kv_dtype) == jnp.int8

        def zeros(shp: tuple[int, ...], dtype: Any) -> jax.Array:
            return jax.jit(partial(jnp.zeros, shp, dtype), out_shardings=cache_sharding(mesh, shp))()

        cache = []
        for _ in range(cfg.num_layers):
            layer = {"k": zeros(shape, self.kv_dtype), "v": zeros(shape, self.kv_dtype)}
            if int8:
                layer["k_scale"] = zeros(shape[:3], jnp.float32)
                layer["v_scale"] = zeros(shape[:3], jnp.float32)
            cache.append(layer)
        return cache

    def _build_functions(self) -> None:
        cfg = self.config
        kv_dtype = self.kv_dtype
        int8_kv = jnp.dtype(kv_dtype) == jnp.int8

        def prefill_fn(
            params: Params, tokens: jax.Array, length: jax.Array, samp: tuple[jax.Array, ...]
        ) -> Any:
            with cpu_kernels.enabled(self.use_cpu_kernels):  # read while tracing
                logits, kv = prefill_forward(params, cfg, tokens, length)
            temperature, top_k, top_p, seeds = samp
            first = sampling.sample(logits, temperature, top_k, top_p, seeds, length)
            return first, kv

        def insert_fn(
            cache: list[LayerKV], tokens: jax.Array, kv: list[LayerKV], slot: jax.Array, first: jax.Array
        ) -> Any:
            out = []
            for c, p in zip(cache, kv, strict=True):
                n = dict(c)
                for name in ("k", "v"):
                    x = p[name]  # [1, K, S, Dh]
                    if int8_kv:
                        q, sc = quantize_kv(x)
                        n[name] = jax.lax.dynamic_update_slice(c[name], q, (slot, 0, 0, 0))
                        n[name + "_scale"] = jax.lax.dynamic_update_slice(
                            c[name + "_scale"], sc, (slot, 0, 0)
                        )
                    else:
                        n[name] = jax.lax.dynamic_update_slice(c[name], x.astype(kv_dtype), (slot, 0, 0, 0))
                out.append(n)
            return out, tokens.at[slot].set(first)

        def generate_fn(
            params: Params,
            cache: list[LayerKV],
            tokens: jax.Array,
            positions: jax.Array,
            samp: tuple[jax.Array, ...],
            attn_len: int,
            greedy: bool,
        ) -> Any:
            rows = positions.shape[0]  # static: the row bucket; positions/samp hold only those rows
            with cpu_kernels.enabled(self.use_cpu_kernels):  # read while tracing
                logits, cache = decode_forward(params, cfg, cache, tokens[:rows], positions, attn_len)
                if greedy:
                    nxt = sampling.greedy(logits)
                else:
                    temperature, top_k, top_p, seeds = samp
                    nxt = sampling.sample(logits, temperature, top_k, top_p, seeds, positions + 1)
            return tokens.at[:rows].set(nxt.astype(tokens.dtype)), cache

        num_slots = self.settings.max_slots

        def mixed_fn(
            params: Params,
            cache: list[LayerKV],
            state: jax.Array,
            tokens: jax.Array,
            from_state: jax.Array,
            slots: jax.Array,
            positions: jax.Array,
            logit_rows: jax.Array,
            logit_slots: jax.Array,
            samp: tuple[jax.Array, ...],
        ) -> Any:
            with cpu_kernels.enabled(True):  # read while tracing
                last = state[jnp.clip(slots, 0, num_slots - 1)]  # decode rows: last step's token
                rows_in = jnp.where(from_state, last, tokens)
                logits, cache = ragged_forward(params, cfg, cache, rows_in, slots, positions, logit_rows)
                temperature, top_k, top_p, seeds = samp
                nxt = sampling.sample(logits, temperature, top_k, top_p, seeds, positions[logit_rows] + 1)
            return state.at[logit_slots].set(nxt.astype(state.dtype), mode="drop"), cache

        opts = self.compiler_options or None
        self._mixed_fn = jax.jit(
            mixed_fn,
            donate_argnums=(1,),
            out_shardings=(self._rep, self._cache_shardings),
            compiler_options=opts,
        )
        self._prefill_fn = jax.jit(prefill_fn, compiler_options=opts)
        # Only the cache is donated: the token vector is tiny, and keeping it undonated means a
        # StepOutput handed to the orchestrator stays valid while later inserts/steps run.
        self._insert_fn = jax.jit(
            insert_fn,
            donate_argnums=(0,),
            out_shardings=(self._cache_shardings, self._rep),
            compiler_options=opts,
        )
        self._generate_fn = jax.jit(
            generate_fn,
            static_argnames=("attn_len", "greedy"),
            donate_argnums=(1,),
            out_shardings=(self._rep, self._cache_shardings),
            compiler_options=opts,
        )

    # ---- Engine protocol -----------------------------------------------------------------

    @property
    def max_slots(self) -> int:
        return self.settings.max_slots

    @property
    def max_prefill_length(self) -> int:
        return self.settings.max_prefill_length

    @property
    def max_target_length(self) -> int:
        return self.settings.max_target_length

    def prefill_bucket(self, length: int) -> int:
        for b in self.prefill_buckets:
            if length <= b:
                return b
        raise ValueError(
            f"prompt has {length} tokens; the limit is max_prefill_length={self.max_prefill_length}"
        )

    def prefill_batch_rows(self, bucket: int) -> int:
        """How many prompts of this bucket `prefill_many` may take at once (a power of two)."""
        rows = 1
        while rows * 2 <= self.settings.max_prefill_batch and rows * 2 * bucket <= PREFILL_BATCH_TOKENS:
            rows *= 2
        return rows

    def _resolve(self, sampling_params: SamplingParams) -> SamplingParams:
        sp = sampling_params
        if sp.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {sp.temperature}")
        if sp.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {sp.top_k}")
        if not 0.0 < sp.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {sp.top_p}")
        if sp.seed is None:
            sp = dataclasses.replace(sp, seed=int(self._rng.integers(0, 2**32)))
        return sp

    def _check_prompt(self, ids: Sequence[int]) -> None:
        if len(ids) == 0:
            raise ValueError("prompt is empty: at least one token is needed")
        bad = [t for t in ids if not 0 <= int(t) < self.config.vocab_size]
        if bad:
            raise ValueError(f"token ids out of range [0, {self.config.vocab_size}): {bad[:5]}")

    def prefill(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> Prefix:
        return self.prefill_many([prompt_ids], [sampling])[0]

    def prefill_many(
        self, prompts: Sequence[Sequence[int]], samplings: Sequence[SamplingParams]
    ) -> list[Prefix]:
        """Prefill several prompts in one call (an extension beyond the `Engine` protocol).

        All prompts are padded to the bucket of the longest and the batch to a power of two, so
        compilations stay bounded; each returned Prefix is exactly what `prefill` would give.
        """
        if len(prompts) != len(samplings) or not prompts:
            raise ValueError("prefill_many needs one SamplingParams per prompt and at least one prompt")
        for ids in prompts:
            self._check_prompt(ids)
        resolved = [self._resolve(sp) for sp in samplings]
        bucket = self.prefill_bucket(max(len(ids) for ids in prompts))
        rows = 1 << (len(prompts) - 1).bit_length()
        tokens = np.zeros((rows, bucket), np.int32)
        lengths = np.ones(rows, np.int32)
        for i, ids in enumerate(prompts):
            tokens[i, : len(ids)] = ids
            lengths[i] = len(ids)
        padded = resolved + [resolved[0]] * (rows - len(prompts))
        first, kv = self._prefill_fn(self.prefill_params, tokens, lengths, _sampling_arrays(padded))
        first_host = np.asarray(first)
        if rows == 1:
            return [
                Prefix(first_token=int(first_host[0]), length=int(lengths[0]), kv=kv, sampling=resolved[0])
            ]
        return [
            Prefix(
                first_token=int(first_host[i]),
                length=int(lengths[i]),
                kv=[{k: a[i : i + 1] for k, a in layer.items()} for layer in kv],
                sampling=sp,
            )
            for i, sp in enumerate(resolved)
        ]

    def transfer(self, prefix: Prefix) -> Prefix:
        if self.generate_mesh is self.prefill_mesh:
            return prefix
        shardings = [
            {k: cache_sharding(self.generate_mesh, a.shape) for k, a in layer.items()} for layer in prefix.kv
        ]
        return dataclasses.replace(prefix, kv=jax.device_put(prefix.kv, shardings))

    def insert(self, prefix: Prefix, slot: int) -> None:
        if not 0 <= slot < self.max_slots:
            raise ValueError(f"slot {slot} out of range [0, {self.max_slots})")
        if prefix.length >= self.max_target_length:
            raise ValueError(f"prefix length {prefix.length} leaves no room below max_target_length")
        self._cache, self._tokens = self._insert_fn(
            self._cache, self._tokens, prefix.kv, np.int32(slot), np.int32(prefix.first_token)
        )
        self._pending.pop(slot, None)
        self._positions[slot] = prefix.length
        self._set_sampling(slot, prefix.sampling)
        self._active.add(slot)

    def _set_sampling(self, slot: int, sp: SamplingParams) -> None:
        self._temperature[slot] = sp.temperature
        self._top_k[slot] = sp.top_k
        self._top_p[slot] = sp.top_p
        self._seeds[slot] = np.uint32((sp.seed or 0) % 2**32)

    def add_prompt(self, slot: int, prompt_ids: Sequence[int], sampling: SamplingParams) -> None:
        """Chunked prefill (an extension beyond the `Engine` protocol, when `chunked_prefill`):
        the prompt runs in the coming `generate` steps, alongside the decoding slots; the step
        that runs its last token also samples its first generated token into `slot`."""
        if not self.chunked_prefill:
            raise RuntimeError("this engine has no chunked prefill (see EngineSettings.chunked_prefill)")
        if not 0 <= slot < self.max_slots:
            raise ValueError(f"slot {slot} out of range [0, {self.max_slots})")
        if slot in self._active or slot in self._pending:
            raise ValueError(f"slot {slot} is busy; release it first")
        self._check_prompt(prompt_ids)
        if len(prompt_ids) > self.max_prefill_length:
            raise ValueError(
                f"prompt has {len(prompt_ids)} tokens; the limit is max_prefill_length={self.max_prefill_length}"
            )
        self._set_sampling(slot, self._resolve(sampling))
        self._pending[slot] = PendingPrompt(np.asarray(prompt_ids, np.int32))

    def attention_bucket(self) -> int:
        """Smallest compiled cache prefix covering every active slot's next position."""
        need = 1 + max((int(self._positions[i]) for i in self._active), default=0)
        for b in self.attention_buckets:
            if need <= b:
                return b
        return self.attention_buckets[-1]

    def row_bucket(self) -> int:
        """Smallest compiled row count covering every active slot."""
        need = 1 + max(self._active, default=0)
        for b in self.row_buckets:
            if need <= b:
                return b
        return self.row_buckets[-1]

    def generate(self) -> StepOutput:
        if self.chunked_prefill:
            return self._mixed_step()
        greedy = all(self._temperature[i] <= 0 for i in self._active)
        rows = self.row_bucket()
        positions = np.minimum(self._positions[:rows], self.max_target_length - 1)
        samp = (self._temperature[:rows], self._top_k[:rows], self._top_p[:rows], self._seeds[:rows])
        self._tokens, self._cache = self._generate_fn(
            self.generate_params,
            self._cache,
            self._tokens,
            positions,
            samp,
            attn_len=self.attention_bucket(),
            greedy=greedy,
        )
        self._positions = np.minimum(self._positions + 1, self.max_target_length - 1)
        return StepOutput(tokens=self._tokens)

    def _mixed_step(self) -> StepOutput:
        """One step of decode rows plus prompt chunks (see `step_plan`)."""
        s = self.settings
        plan = plan_step(
            self._active, self._positions, self._pending, self.step_buckets, s.max_slots, s.max_target_length
        )
        idx = np.minimum(plan.logit_slots, s.max_slots - 1)
        real = plan.logit_slots < s.max_slots
        samp = (
            np.where(real, self._temperature[idx], 0.0).astype(np.float32),
            self._top_k[idx],
            self._top_p[idx],
            self._seeds[idx],
        )
        self._tokens, self._cache = self._mixed_fn(
            self.generate_params,
            self._cache,
            self._tokens,
            plan.tokens,
            plan.from_state,
            plan.slots,
            plan.positions,
            plan.logit_rows,
            plan.logit_slots,
            samp,
        )
        decoding = np.fromiter(self._active, np.int64, len(self._active))
        self._positions[decoding] = np.minimum(self._positions[decoding] + 1, s.max_target_length - 1)
        for slot, n in plan.taken.items():
            self._pending[slot].done += n
        for slot in plan.completed:
            self._positions[slot] = len(self._pending.pop(slot).ids)
            self._active.add(slot)
        return StepOutput(tokens=self._tokens, slots=plan.emitted)

    def release(self, slot: int) -> None:
        self._active.discard(slot)
        self._pending.pop(slot, None)

    def warmup(self) -> None:
        if self.chunked_prefill:
            self._warmup_mixed()
            return
        start = time.perf_counter()
        for bucket in self.prefill_buckets:
            prefix = self.transfer(self.prefill([0] * bucket, SamplingParams(seed=0)))
            self.insert(prefix, 0)
            rows = 2
            while rows <= self.prefill_batch_rows(bucket):
                self.prefill_many([[0] * bucket] * rows, [SamplingParams(seed=0)] * rows)
                rows *= 2
        top = self.row_buckets[-1] - 1  # marking the last slot active selects each row bucket in turn
        for rows in self.row_buckets:
            self._active = {0, rows - 1}
            for attn in self.attention_buckets:
                for greedy in (True, False):
                    self._positions[0] = attn - 1
                    self._temperature[0] = 0.0 if greedy else 1.0
                    np.asarray(self.generate().tokens)
        self._temperature[0] = 0.0
        self._positions[: top + 1] = 0
        self._active = set()
        log.info(
            "warmup compiled %d prefill buckets and %d x %d (rows x attention) decode buckets in %.1fs",
            len(self.prefill_buckets),
            len(self.row_buckets),
            len(self.attention_buckets),
            time.perf_counter() - start,
        )


    def _warmup_mixed(self) -> None:
        """Compile every step bucket with padding rows only (nothing is read or written)."""
        start = time.perf_counter()
        s = self.settings
        for rows in self.step_buckets:
            r = min(rows, s.max_slots)
            self._tokens, self._cache = self._mixed_fn(
                self.generate_params,
                self._cache,
                self._tokens,
                np.zeros(rows, np.int32),
                np.zeros(rows, bool),
                np.full(rows, s.max_slots, np.int32),
                np.full(rows, s.max_target_length, np.int32),
                np.zeros(r, np.int32),
                np.full(r, s.max_slots, np.int32),
                _sampling_arrays([SamplingParams(seed=0)] * r),
            )
        np.asarray(self._tokens)
        log.info(
            "warmup compiled %d mixed-step buckets (%s rows) in %.1fs",
            len(self.step_buckets),
            ", ".join(map(str, self.step_buckets)),
            time.perf_counter() - start,
        )


def _sampling_arrays(params: Sequence[SamplingParams]) -> tuple[np.ndarray, ...]:
    return (
        np.array([p.temperature for p in params], np.float32),
        np.array([p.top_k for p in params], np.int32),
        np.array([p.top_p for p in params], np.float32),
        np.array([(p.seed or 0) % 2**32 for p in params], np.uint32),
    )


def model_for(settings: EngineSettings, devices: Sequence[jax.Device] | None = None) -> LoadedModel:
    """Load (on host) the weights and tokenizer that `settings` names, in the platform's dtype."""
    validate_settings(settings)
    if settings.model_path is not None:
        path = settings.model_path
    else:
        path = str(embedded_model_path(settings.model or ""))
    platform = (list(devices) if devices is not None else jax.devices())[0].platform
    compute, _, int8 = resolve_dtypes(settings, platform)
    return load_model(path, dtype=np.dtype(compute), int8=int8)


def load_engine(settings: EngineSettings, devices: Sequence[jax.Device] | None = None) -> JaxEngine:
    """Load the model named by `settings` and build an engine on `devices` (default: all)."""
    validate_settings(settings)
    enable_compilation_cache(settings.compilation_cache_dir)
    return JaxEngine(settings, model_for(settings, devices), devices)
