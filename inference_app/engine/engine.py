"""The JAX engine: prefill / transfer / insert / generate / release over a slot-based KV cache.

One request's life: `prefill` pads the prompt to a compiled bucket, runs it on the prefill mesh
and samples the first token; `transfer` moves the prompt's KV to the generate mesh (identity
when both stages share devices); `insert` writes that KV into a free slot of the preallocated
cache (donated, updated in place); every `generate` call advances all slots by one token, each at
its own position; `release` frees the slot. With chunked prefill (the CPU default) `add_prompt`
replaces prefill/transfer/insert: the prompt runs in chunks inside the coming `generate` steps.
`set_token_mask` restricts a slot's next sampled token to a bitmask of allowed tokens (structured
outputs; `prefill_masked` does the same for the first token of a separate prefill).
`score_prompt` (echo with log-probabilities) runs a prompt through the model on its own, like
`prefill`, and keeps nothing.

How it runs where it runs is decided once (`policy.derive_policy`); what it runs on device are
the pure functions of `steps.py`, jitted here; how each step's rows are laid out is the
`StepLayout` the policy picks (`step_plan.py`), the one variable part of `generate` and `warmup`.

Threads: `prefill`/`transfer` touch only the prefill parameters and may run on their own thread
(disaggregated serving does); `insert`, `add_prompt`, `generate` and `release` share the slot
state and must be called from one thread.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from functools import lru_cache, partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from inference_app.engine import steps
from inference_app.engine.api import (
    MAX_TOP_LOGPROBS,
    Prefix,
    SamplingParams,
    StepLogprobs,
    StepOutput,
    TokenLogprobs,
)
from inference_app.engine.block_tables import KVBlockManager
from inference_app.engine.buckets import fit, ladder, step_rows
from inference_app.engine.kv_blocks import BlockPool
from inference_app.engine.kv_budget import EngineLimits, device_free_bytes, engine_limits, host_free_bytes
from inference_app.engine.policy import EnginePolicy, derive_policy, resolve_dtypes, resolve_weight_dtype
from inference_app.engine.sampling import Sampler
from inference_app.engine.settings import EngineSettings, SettingsError
from inference_app.engine.sharding import cache_sharding, make_mesh, param_shardings, replicated
from inference_app.engine.step_plan import (
    PendingPrompt,
    RaggedLayout,
    SlotLayout,
    SlotView,
    StepLayout,
    StepPlan,
    StepShape,
    padding_plan,
)
from inference_app.engine.steps import Picks, SamplingRows, StepInputs, sampler_for
from inference_app.kernels import build as kernel_build
from inference_app.model.catalog import ARCHITECTURES, embedded_model_path
from inference_app.model.config import ModelConfig
from inference_app.model.loader import LoadedModel, check_combination, checkpoint_format, load_model
from inference_app.model.paged_attention import PagedLayout, paged_layout, ragged_sequences
from inference_app.model.quant import pack_matrices
from inference_app.model.tokenizer import TextTokenizer
from inference_app.model.transformer import LayerKV, Params

log = logging.getLogger(__name__)

MIN_PREFILL_BUCKET = 32
MIN_ATTENTION_BUCKET = 128
# The token choices warm-up compiles for every count of sampled rows: greedy, and sampling from
# the whole distribution (OpenAI's defaults: temperature 1, top_p 1). A request with top_k or
# top_p < 1 compiles the sorting sampler on first use (about 1.5 s per row count).
WARM_SAMPLERS: tuple[Sampler, ...] = ("greedy", "full")
# Batched prefill pads every prompt to the batch's bucket and the batch to a power of two rows;
# this caps rows x bucket, so only short-prompt buckets batch (long ones are big matmuls already).
PREFILL_BATCH_TOKENS = 512
# Decode steps compute only the first `rows` slots (a bucket covering every active slot; the
# orchestrator fills the lowest free slot first), so a lone request on a 32-slot server pays for
# a 1-row step, not a 32-row one. Buckets grow by this factor to bound the number of compiles.
ROW_BUCKET_GROWTH = 4


def enable_compilation_cache(path: str | None) -> None:
    """Persist compiled executables across processes (startup drops from compile to load time)."""
    if not path:
        return
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def validate_settings(s: EngineSettings) -> None:
    """What settings alone can be checked for; the limits left to sizing are checked there."""
    if s.model is None and s.model_path is None:
        raise ValueError("set EngineSettings.model (catalog name) or EngineSettings.model_path")
    if s.model is not None and s.model_path is not None and s.model not in ARCHITECTURES:
        raise ValueError(
            f"EngineSettings.model {s.model!r} with a model_path names the checkpoint's architecture; "
            f"choose one of {sorted(ARCHITECTURES)} or leave model unset (HF and GGUF carry their own)"
        )
    for name in ("max_slots", "max_prefill_length", "max_target_length", "kv_cache_memory"):
        value = getattr(s, name)
        if value is not None and value < 1:
            raise ValueError(f"EngineSettings.{name} must be >= 1, got {value}")
    if s.kv_block_size < 1:
        raise ValueError(f"EngineSettings.kv_block_size must be >= 1, got {s.kv_block_size}")
    if (
        s.max_target_length is not None
        and s.max_prefill_length is not None
        and s.max_target_length <= s.max_prefill_length
    ):
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


def split_devices(mode: str, devices: Sequence[jax.Device]) -> tuple[list[jax.Device], list[jax.Device]]:
    """(prefill devices, generate devices): the same list in interleaved mode, halves otherwise."""
    if mode != "disaggregated":
        return list(devices), list(devices)
    if len(devices) < 2 or len(devices) % 2:
        raise ValueError(f"mode 'disaggregated' needs an even number (>= 2) of devices, found {len(devices)}")
    half = len(devices) // 2
    return list(devices[:half]), list(devices[half:])


class JaxEngine:
    """Implements `inference_app.engine.api.Engine` (with `BatchedPrefill`, `ChunkedPrefill`,
    `PromptScoring` and `TokenMasks`) for Llama-family models."""

    def __init__(
        self,
        settings: EngineSettings,
        model: LoadedModel,
        devices: Sequence[jax.Device] | None = None,
    ) -> None:
        validate_settings(settings)
        if settings.weight_dtype == "auto" and model.matrices != "float":  # model_for's choice
            settings = dataclasses.replace(settings, weight_dtype=model.matrices)
        s = self.settings = settings
        self.mode = s.mode
        self.config: ModelConfig = model.config
        self.tokenizer: TextTokenizer = model.tokenizer
        devices = list(devices if devices is not None else jax.devices())
        prefill_devices, generate_devices = split_devices(s.mode, devices)
        axes = (s.ici_fsdp_parallelism, s.ici_autoregressive_parallelism, s.ici_tensor_parallelism)
        self.prefill_mesh: Mesh = make_mesh(prefill_devices, *axes)
        self.generate_mesh: Mesh = (
            self.prefill_mesh if s.mode == "interleaved" else make_mesh(generate_devices, *axes)
        )
        self.policy: EnginePolicy = derive_policy(
            s, devices[0].platform, self.generate_mesh.size, kernel_build.available
        )
        self.chunked_prefill = self.policy.chunked_prefill

        # The weights place themselves (streamed shard by shard for big checkpoints); the
        # generate mesh, if separate, gets a device-to-device copy.
        abstract = model.weights.abstract()
        self.prefill_params: Params = model.weights.place(param_shardings(self.prefill_mesh, abstract))
        # Block matrices in the native kernel's 16-row layout, where the kernel library has it
        self.packed = self.policy.kernels.cpu and kernel_build.packed_layout()
        if self.packed:
            self.prefill_params = jax.device_put(pack_matrices(self.prefill_params))
        if self.generate_mesh is self.prefill_mesh:
            self.generate_params = self.prefill_params
        else:
            self.generate_params = jax.device_put(
                self.prefill_params, param_shardings(self.generate_mesh, abstract)
            )
        self.limits = self._size_limits(generate_devices[0])
        self.max_slots = self.limits.max_slots
        self.max_prefill_length = self.limits.max_prefill_length
        self.max_target_length = self.limits.max_target_length
        # The paged cache's static description and host-side books (chunked prefill only).
        self.paged: steps.Paged | None = None
        self.kv_blocks: KVBlockManager | None = None
        if self.policy.paged_kernel is not None:
            budget = self.limits.budget
            self.paged = steps.Paged(self.policy.paged_kernel, self._paged_layout(budget.num_blocks))
            self.kv_blocks = KVBlockManager(
                BlockPool(budget.num_blocks),
                budget.block_size,
                self.max_slots,
                self.max_target_length,
                s.prefix_caching,
            )
        self._cache = self._allocate_cache()
        self._cache_shardings = jax.tree.map(lambda a: a.sharding, self._cache)
        self._rep = replicated(self.generate_mesh)
        kv = self.limits.budget
        log.info(
            "Weights: %s matrices%s, %s compute (--weight-dtype %s)",
            self.policy.matrices,
            " (rows packed by 16 for the CPU kernels)" if self.packed else "",
            jnp.dtype(self.policy.compute_dtype).name,
            s.weight_dtype,
        )
        log.info(
            "KV cache: %s, %d tokens (%.0f MiB); %d slots, %d tokens per sequence, prompts up to %d",
            f"paged, {kv.num_blocks} blocks of {kv.block_size} ({self.policy.paged_kernel} attention"
            f"{', prefix caching' if s.prefix_caching else ''})"
            if self.paged is not None
            else "one region per slot",
            kv.tokens,
            kv.cache_bytes / 2**20,
            self.max_slots,
            self.max_target_length,
            self.max_prefill_length,
        )

        self.prefill_buckets = ladder(
            min(MIN_PREFILL_BUCKET, self.max_prefill_length), self.max_prefill_length
        )
        self.step_buckets = step_rows(self.max_slots, max(s.max_step_tokens, self.max_slots))
        self.layout: StepLayout = (
            RaggedLayout(self.step_buckets, self.max_slots, self.max_target_length)
            if self.chunked_prefill
            else SlotLayout(
                self._row_buckets(), self._attention_buckets(), self.max_slots, self.max_target_length
            )
        )

        b = self.max_slots
        self._tokens = jax.device_put(np.zeros(b, np.int32), self._rep)  # every slot's latest token
        self._positions = np.zeros(b, np.int32)  # where each slot's next token goes
        self._temperature = np.zeros(b, np.float32)
        self._top_k = np.zeros(b, np.int32)
        self._top_p = np.ones(b, np.float32)
        self._seeds = np.zeros(b, np.uint32)
        self._logprobs = np.zeros(b, bool)  # the slot's request asks for log-probabilities
        self.mask_vocab = self.config.vocab_size
        self._masks = np.full((b, (self.mask_vocab + 31) // 32), -1, np.int32)  # allowed tokens
        self._constrained = np.zeros(b, bool)  # the slot's row of `_masks` is not all ones
        self._active: set[int] = set()  # slots that decode
        self._pending: dict[int, PendingPrompt] = {}  # slot -> prompt being prefilled, FIFO
        # Paged cache: tokens each slot's request may hold (prompt + max new tokens); a slot that
        # reaches it decodes no further until it is released.
        self._capacity = np.full(b, self.max_target_length, np.int32)
        self._rng = np.random.default_rng()
        self._jit_steps()

    # ---- construction helpers ------------------------------------------------------------

    def _paged_layout(self, num_blocks: int) -> PagedLayout:
        cfg, kernel = self.config, self.policy.paged_kernel
        assert kernel is not None  # callers check the policy
        return paged_layout(
            kernel,
            num_blocks,
            self.settings.kv_block_size,
            cfg.num_kv_heads,
            cfg.head_dim,
            self.policy.kv_dtype,
        )

    def _size_limits(self, device: jax.Device) -> EngineLimits:
        """Slots, lengths and KV cache size from the settings, else from free memory: the
        device's where it reports it (TPU/GPU, after the weights are placed), else the host's."""
        s, cfg, kv = self.settings, self.config, jnp.dtype(self.policy.kv_dtype)
        if self.policy.paged_kernel is not None:
            per_layer = self._paged_layout(1).bytes_per_token(kv)
        else:
            per_layer = 2 * cfg.num_kv_heads * (cfg.head_dim * kv.itemsize + (4 if kv == jnp.int8 else 0))
        free = device_free_bytes(device)
        return engine_limits(
            paged=self.policy.paged_kernel is not None,
            platform=device.platform,
            free_bytes=host_free_bytes() if free is None else free,
            bytes_per_token=per_layer * cfg.num_layers,
            block_size=s.kv_block_size,
            model_context=cfg.max_position_embeddings,
            cache_bytes=s.kv_cache_memory,
            max_slots=s.max_slots,
            max_target_length=s.max_target_length,
            max_prefill_length=s.max_prefill_length,
        )

    def _allocate_cache(self) -> list[LayerKV]:
        cfg, kv_dtype = self.config, self.policy.kv_dtype
        shape = (self.max_slots, cfg.num_kv_heads, self.max_target_length, cfg.head_dim)
        mesh = self.generate_mesh

        def zeros(shp: tuple[int, ...], dtype: Any) -> jax.Array:
            return _zeros_program(shp, jnp.dtype(dtype), cache_sharding(mesh, shp))()

        if self.paged is not None:  # one block array per layer, whole on the one device
            pages = self.paged.layout.shape
            rep = replicated(mesh)
            return [{"kv": _zeros_program(pages, jnp.dtype(kv_dtype), rep)()} for _ in range(cfg.num_layers)]
        cache = []
        for _ in range(cfg.num_layers):
            layer = {"k": zeros(shape, kv_dtype), "v": zeros(shape, kv_dtype)}
            if jnp.dtype(kv_dtype) == jnp.int8:
                layer["k_scale"] = zeros(shape[:3], jnp.float32)
                layer["v_scale"] = zeros(shape[:3], jnp.float32)
            cache.append(layer)
        return cache

    def _row_buckets(self) -> tuple[int, ...]:
        """Decode row counts of the slot layout: from one slot per shard of the cache's slot
        dimension up to every slot (only every slot when the policy says so)."""
        if self.policy.full_width_steps:
            return (self.max_slots,)
        slot_axes = cache_sharding(self.generate_mesh, self._cache[0]["k"].shape).spec[0]
        if slot_axes is None:
            slot_axes = ()
        elif isinstance(slot_axes, str):
            slot_axes = (slot_axes,)
        slot_shards = int(np.prod([self.generate_mesh.shape[a] for a in slot_axes]))
        return ladder(slot_shards, self.max_slots, growth=ROW_BUCKET_GROWTH)

    def _attention_buckets(self) -> tuple[int, ...]:
        """Cache prefixes decode attention may read: one length when the kernel reads in place."""
        top = self.max_target_length
        return (top,) if self.policy.kernel_attention else ladder(min(MIN_ATTENTION_BUCKET, top), top)

    def _jit_steps(self) -> None:
        """Jit the device programs of `steps.py` for this engine's model, kernels and meshes."""
        cfg, kernels = self.config, self.policy.kernels
        opts = self.policy.compiler_options or None
        self._prefill_fn = jax.jit(partial(steps.prefill, cfg=cfg, kernels=kernels), compiler_options=opts)
        choice = ("sampler", "logprobs")
        self._first_fn = jax.jit(partial(steps.choose, kernels=kernels), static_argnames=choice)
        self._choose_fn = jax.jit(partial(steps.choose_into, kernels=kernels), static_argnames=choice)
        self._score_fn = jax.jit(partial(steps.score, cfg=cfg, kernels=kernels), compiler_options=opts)
        # Only the cache is donated: the token vector is tiny, and keeping it undonated means a
        # StepOutput handed to the orchestrator stays valid while later inserts/steps run.
        self._insert_fn = jax.jit(
            steps.insert if self.paged is None else partial(steps.insert_paged, layout=self.paged.layout),
            donate_argnums=(0,),
            out_shardings=(self._cache_shardings, self._rep),
            compiler_options=opts,
        )
        attention: steps.AttentionKind = (
            "paged" if self.paged is not None else "ragged_kernel" if self.policy.kernel_attention else "slot"
        )
        self._copy_fn = jax.jit(
            steps.copy_blocks, donate_argnums=(0,), out_shardings=self._cache_shardings, compiler_options=opts
        )
        self._step_fn = jax.jit(
            partial(steps.step, cfg=cfg, kernels=kernels, attention=attention, paged=self.paged),
            static_argnames=("attn_len",),
            donate_argnums=(1,),
            out_shardings=(self._cache_shardings, self._rep),
            compiler_options=opts,
        )

    # ---- prefill stage (BatchedPrefill) --------------------------------------------------

    def prefill_bucket(self, length: int) -> int:
        bucket = fit(self.prefill_buckets, length)
        if bucket is None:
            raise ValueError(
                f"prompt has {length} tokens; the limit is max_prefill_length={self.max_prefill_length}"
            )
        return bucket

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
        if sp.logprobs is not None and not 0 <= sp.logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {sp.logprobs}")
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
        """Prefill several prompts in one call (`BatchedPrefill`).

        All prompts are padded to the bucket of the longest and the batch to a power of two, so
        compilations stay bounded; each returned Prefix is exactly what `prefill` would give.
        """
        return self._prefill_rows(prompts, samplings, None)

    def prefill_masked(
        self, prompts: Sequence[Sequence[int]], samplings: Sequence[SamplingParams], bitmasks: np.ndarray
    ) -> list[Prefix]:
        """`TokenMasks`: `prefill_many` with each first token sampled under its row of `bitmasks`
        (a second compiled variant per bucket, compiled on first use)."""
        if bitmasks.shape != (len(prompts), self._masks.shape[1]):
            want = (len(prompts), self._masks.shape[1])
            raise ValueError(f"bitmasks must be int32 {list(want)}, got {list(bitmasks.shape)}")
        return self._prefill_rows(prompts, samplings, bitmasks)

    def _prefill_rows(
        self,
        prompts: Sequence[Sequence[int]],
        samplings: Sequence[SamplingParams],
        bitmasks: np.ndarray | None,
    ) -> list[Prefix]:
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
        want = any(sp.logprobs is not None for sp in resolved)
        mask = None
        if bitmasks is not None:
            mask = np.full((rows, self._masks.shape[1]), -1, np.int32)
            mask[: len(prompts)] = bitmasks
        logits, kv = self._prefill_fn(self.prefill_params, tokens, lengths)
        picks = Picks(np.zeros(rows, np.int32), SamplingRows.of(padded), lengths, mask)
        first, lp = self._first_fn(logits, picks, sampler=sampler_for(picks.sampling), logprobs=want)
        first_host = np.asarray(first)
        lp_host = lp.host() if lp is not None else None

        def first_logprobs(i: int, sp: SamplingParams) -> TokenLogprobs | None:
            return None if lp_host is None or sp.logprobs is None else lp_host.row(i, sp.logprobs)

        return [
            Prefix(
                first_token=int(first_host[i]),
                length=int(lengths[i]),
                kv=kv if rows == 1 else [{k: a[i : i + 1] for k, a in layer.items()} for layer in kv],
                sampling=sp,
                logprobs=first_logprobs(i, sp),
            )
            for i, sp in enumerate(resolved)
        ]

    def score_prompt(self, prompt_ids: Sequence[int], top: int) -> list[TokenLogprobs]:
        """`PromptScoring`: the prompt through the model at every position (its own compiled
        program per prefill bucket, compiled on first use; nothing is cached)."""
        self._check_prompt(prompt_ids)
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top must be in [0, {MAX_TOP_LOGPROBS}], got {top}")
        n = len(prompt_ids)
        tokens = np.zeros((1, self.prefill_bucket(n)), np.int32)
        tokens[0, :n] = prompt_ids
        rows: StepLogprobs = self._score_fn(self.prefill_params, tokens, np.asarray([n], np.int32))
        host = rows.host()
        host = StepLogprobs(host.tokens[0], host.chosen[0], host.top_ids[0], host.top_logprobs[0])
        return [host.row(p, top) for p in range(n - 1)]

    def transfer(self, prefix: Prefix) -> Prefix:
        if self.generate_mesh is self.prefill_mesh:
            return prefix
        shardings = [
            {k: cache_sharding(self.generate_mesh, a.shape) for k, a in layer.items()} for layer in prefix.kv
        ]
        return dataclasses.replace(prefix, kv=jax.device_put(prefix.kv, shardings))

    # ---- slots -----------------------------------------------------------------------------

    def insert(self, prefix: Prefix, slot: int) -> None:
        if not 0 <= slot < self.max_slots:
            raise ValueError(f"slot {slot} out of range [0, {self.max_slots})")
        if prefix.length >= self.max_target_length:
            raise ValueError(f"prefix length {prefix.length} leaves no room below max_target_length")
        args: tuple[Any, ...] = (
            self._cache,
            self._tokens,
            prefix.kv,
            np.int32(slot),
            np.int32(prefix.first_token),
        )
        if self.kv_blocks is not None:  # a paged cache: the sequence may grow to the full context
            self.release(slot)
            self.kv_blocks.admit_unknown(slot, prefix.length, self.max_target_length - prefix.length)
            self.kv_blocks.grow(slot, prefix.length)
            args = (*args, self.kv_blocks.tables.copy())
        self._cache, self._tokens = self._insert_fn(*args)
        self._pending.pop(slot, None)
        self._positions[slot] = prefix.length
        self._set_sampling(slot, prefix.sampling)
        self._active.add(slot)

    def _set_sampling(self, slot: int, sp: SamplingParams) -> None:
        self._temperature[slot] = sp.temperature
        self._top_k[slot] = sp.top_k
        self._top_p[slot] = sp.top_p
        self._seeds[slot] = np.uint32((sp.seed or 0) % 2**32)
        self._logprobs[slot] = sp.logprobs is not None

    def add_prompt(
        self,
        slot: int,
        prompt_ids: Sequence[int],
        sampling: SamplingParams,
        max_new_tokens: int | None = None,
    ) -> None:
        """Chunked prefill (`ChunkedPrefill`, when `chunked_prefill`): the prompt runs in the
        coming `generate` steps, alongside the decoding slots; the step that runs its last token
        also samples its first generated token into `slot`.

        The request's KV blocks (prompt + `max_new_tokens`, default: up to `max_target_length`)
        are reserved now; the prompt's longest prefix already in the prefix cache is not computed
        again. Raises `OutOfBlocks` when the cache cannot hold it (see `can_admit`).
        """
        if self.kv_blocks is None:
            raise RuntimeError("this engine has no chunked prefill (see EngineSettings.chunked_prefill)")
        if not 0 <= slot < self.max_slots:
            raise ValueError(f"slot {slot} out of range [0, {self.max_slots})")
        if slot in self._active or slot in self._pending:
            raise ValueError(f"slot {slot} is busy; release it first")
        self._check_prompt(prompt_ids)
        if len(prompt_ids) > self.max_prefill_length:
            raise ValueError(
                f"prompt has {len(prompt_ids)} tokens; "
                f"the limit is max_prefill_length={self.max_prefill_length}"
            )
        new = self.max_target_length - len(prompt_ids) if max_new_tokens is None else max_new_tokens
        resolved = self._resolve(sampling)
        cached = self.kv_blocks.admit(slot, prompt_ids, new)
        self._capacity[slot] = len(prompt_ids) + new
        self._set_sampling(slot, resolved)
        self._pending[slot] = PendingPrompt(np.asarray(prompt_ids, np.int32), done=cached)

    def can_admit(self, prompt_ids: Sequence[int], max_new_tokens: int) -> bool:
        """Whether the paged cache can take this request now (its blocks, after prefix hits)."""
        return self.kv_blocks is not None and self.kv_blocks.can_admit(prompt_ids, max_new_tokens)

    def release(self, slot: int) -> None:
        self._active.discard(slot)
        self._pending.pop(slot, None)
        if self.kv_blocks is not None:
            self.kv_blocks.release(slot)
            self._capacity[slot] = self.max_target_length
        self.set_token_mask(slot, None)

    def set_token_mask(self, slot: int, bitmask: np.ndarray | None) -> None:
        """`TokenMasks`: the slot's next sampled token is one `bitmask` allows (None: any)."""
        if bitmask is None:
            self._masks[slot] = -1
            self._constrained[slot] = False
        else:
            self._masks[slot] = bitmask
            self._constrained[slot] = True

    # ---- steps -----------------------------------------------------------------------------

    def _decoding(self) -> set[int]:
        """Slots that decode in the next step: every active one, except (paged cache) those that
        reached their request's capacity and only wait to be released."""
        if self.kv_blocks is None:
            return self._active
        return {s for s in self._active if self._positions[s] < self._capacity[s]}

    def next_step(self) -> tuple[StepPlan, StepShape]:
        """The layout and compiled shape of the step `generate` would run now."""
        return self.layout.plan(SlotView(self._decoding(), self._positions, self._pending))

    def generate(self) -> StepOutput:
        decoding = self._decoding()
        plan, shape = self.layout.plan(SlotView(decoding, self._positions, self._pending))
        if self.kv_blocks is not None:  # blocks for every token this step writes
            for slot in decoding:
                self.kv_blocks.grow(slot, int(self._positions[slot]) + 1)
            for slot, n in plan.taken.items():
                self.kv_blocks.grow(slot, self._pending[slot].done + n)
        self._apply_copies()
        logprobs = self._run(plan, shape)
        rows = np.fromiter(decoding, np.int64, len(decoding))
        self._positions[rows] = np.minimum(self._positions[rows] + 1, self.max_target_length - 1)
        for slot, n in plan.taken.items():
            self._pending[slot].done += n
            if self.kv_blocks is not None:  # dispatched: later steps may read these blocks
                self.kv_blocks.written(slot, self._pending[slot].done)
        for slot in plan.completed:
            self._positions[slot] = len(self._pending.pop(slot).ids)
            self._active.add(slot)
        return StepOutput(tokens=self._tokens, slots=plan.emitted, logprobs=logprobs)

    def _apply_copies(self) -> None:
        """Dispatch the block copies admission asked for (partly shared prompt blocks), before
        the step that reads them: one program for any count, padded to `max_slots` entries."""
        copies = self.kv_blocks.take_copies() if self.kv_blocks is not None else []
        for start in range(0, len(copies), self.max_slots):
            chunk = copies[start : start + self.max_slots]
            pairs = np.zeros((2, self.max_slots), np.int32)
            pairs[:, : len(chunk)] = np.array(chunk, np.int32).T
            self._cache = self._copy_fn(self._cache, pairs[0], pairs[1], np.int32(len(chunk)))

    def _run(self, plan: StepPlan, shape: StepShape) -> StepLogprobs | None:
        """Dispatch one compiled step and the choice of its tokens (no host sync): the slots'
        tokens and the cache advance.

        The choice computes log-probabilities only when one of its slots asks for them, takes
        token masks only when one of them is constrained, and samples only when one of them
        does, with the vocabulary sort only when one truncates (top_k, top_p): variants of the
        small choosing program, per count of sampled rows."""
        logits = self._forward(plan, shape)
        picks = self.picks(plan)
        self._tokens, logprobs = self._choose_fn(
            self._tokens,
            logits,
            picks,
            sampler=sampler_for(picks.sampling),
            logprobs=self._wants_logprobs(plan),
        )
        return logprobs

    def _forward(self, plan: StepPlan, shape: StepShape) -> jax.Array:
        """Dispatch the model over the plan's rows (the cache advances); the sampled rows' logits."""
        self._cache, logits = self._step_fn(
            self.generate_params, self._cache, self._tokens, self.step_inputs(plan), attn_len=shape.attn_len
        )
        return logits

    def step_inputs(self, plan: StepPlan) -> StepInputs:
        """The host inputs of the step that runs `plan`: its rows and the block tables."""
        tables, sequences = None, None
        if self.kv_blocks is not None:
            tables = self.kv_blocks.tables.copy()  # the host copy changes while the step runs
            if self.policy.paged_kernel == "pallas_tpu":
                sequences = ragged_sequences(plan.slots, plan.positions, self.max_slots)
        return StepInputs(
            plan.tokens, plan.from_state, plan.slots, plan.positions, plan.logit_rows, tables, sequences
        )

    def picks(self, plan: StepPlan) -> Picks:
        """How the step's sampled slots choose their tokens: their sampling (padding rows greedy),
        positions, and token masks when one of them is constrained."""
        idx, real = self._sampled_slots(plan)
        rows = SamplingRows(
            np.where(real, self._temperature[idx], 0.0).astype(np.float32),  # padding: greedy
            self._top_k[idx],
            self._top_p[idx],
            self._seeds[idx],
        )
        masked = bool(self._constrained[idx[real]].any())
        return Picks(
            plan.logit_slots,
            rows,
            plan.positions[plan.logit_rows] + 1,  # where the sampled tokens will sit
            mask=np.where(real[:, None], self._masks[idx], -1) if masked else None,
        )

    def _wants_logprobs(self, plan: StepPlan) -> bool:
        idx, real = self._sampled_slots(plan)
        return bool(self._logprobs[idx[real]].any())

    def _sampled_slots(self, plan: StepPlan) -> tuple[np.ndarray, np.ndarray]:
        """The slot of each sampled row, clipped so padding rows (slot >= max_slots) index a real
        one, and which rows are real."""
        return np.minimum(plan.logit_slots, self.max_slots - 1), plan.logit_slots < self.max_slots

    def warmup(self) -> None:
        """Compile everything a request can reach: the prefill stage's buckets (unless prompts
        prefill inside the steps) and every step shape of the layout, the latter with padding
        rows that read and write nothing, each with the choices in `WARM_SAMPLERS`. (Truncated
        sampling, log-probabilities and token masks compile their choices on first use.)"""
        start = time.perf_counter()
        if not self.chunked_prefill:
            for bucket in self.prefill_buckets:
                self.insert(self.transfer(self.prefill([0] * bucket, SamplingParams(seed=0))), 0)
                self.release(0)
                rows = 1
                while rows <= self.prefill_batch_rows(bucket):
                    self._warm_prefill(bucket, rows)
                    rows *= 2
        if self.kv_blocks is not None:  # the block-copy program (a count of 0 copies nothing)
            pad = np.zeros(self.max_slots, np.int32)
            self._cache = self._copy_fn(self._cache, pad, pad, np.int32(0))
        shapes = self.layout.shapes()
        for shape in shapes:
            plan = padding_plan(shape.rows, self.max_slots, self.max_target_length)
            logits, picks = self._forward(plan, shape), self.picks(plan)
            for sampler in WARM_SAMPLERS:
                self._tokens, _ = self._choose_fn(
                    self._tokens, logits, picks, sampler=sampler, logprobs=False
                )
        np.asarray(self._tokens)
        log.info(
            "warmup compiled %d prefill buckets and %d step shapes (%s rows) in %.1fs",
            0 if self.chunked_prefill else len(self.prefill_buckets),
            len(shapes),
            ", ".join(map(str, sorted({s.rows for s in shapes}))),
            time.perf_counter() - start,
        )

    def _warm_prefill(self, bucket: int, rows: int) -> None:
        """Compile the prefill of `rows` prompts of `bucket` tokens and both choices of their first tokens."""
        lengths = np.ones(rows, np.int32)
        logits, _ = self._prefill_fn(self.prefill_params, np.zeros((rows, bucket), np.int32), lengths)
        picks = Picks(np.zeros(rows, np.int32), SamplingRows.of([SamplingParams(seed=0)] * rows), lengths)
        for sampler in WARM_SAMPLERS:
            np.asarray(self._first_fn(logits, picks, sampler=sampler, logprobs=False)[0])


@lru_cache(maxsize=64)
def _zeros_program(shape: tuple[int, ...], dtype: np.dtype, sharding: jax.sharding.Sharding) -> Any:
    """A compiled program that makes a fresh zero array, one per shape and placement: shared by
    every layer's cache and every engine in the process (a new jit per layer compiled 30 times,
    about 2 s per engine)."""
    return jax.jit(partial(jnp.zeros, shape, dtype), out_shardings=sharding)


def model_for(settings: EngineSettings, devices: Sequence[jax.Device] | None = None) -> LoadedModel:
    """Open the checkpoint and tokenizer that `settings` names, weights unplaced, in the format and
    dtype its `weight_dtype` resolves to on these devices (`policy.resolve_weight_dtype`)."""
    validate_settings(settings)
    if settings.model_path is not None:
        path = settings.model_path
    else:
        path = str(embedded_model_path(settings.model or ""))
    devs = list(devices) if devices is not None else jax.devices()
    platform = devs[0].platform
    fmt = checkpoint_format(path)
    _, generate = split_devices(settings.mode, devs)
    weight_dtype = resolve_weight_dtype(settings, platform, fmt, len(generate), kernel_build.available)
    settings = dataclasses.replace(settings, weight_dtype=weight_dtype)
    compute, _, matrices = resolve_dtypes(settings, platform)
    try:
        check_combination(fmt, matrices)
    except ValueError as e:
        raise SettingsError(
            f"--weight-dtype {settings.weight_dtype} does not fit --model-path {path!r}: {e}. "
            "q4_0/q4_1/q8_0 need a GGUF file or a Hugging Face checkpoint, gguf a GGUF file; "
            "auto, float32, bfloat16 and int8 fit every checkpoint"
        ) from None
    return load_model(
        path,
        dtype=np.dtype(compute),
        matrices=matrices,
        model_name=settings.model if settings.model_path is not None else None,
        tokenizer_path=settings.tokenizer_path,
    )


def load_engine(settings: EngineSettings, devices: Sequence[jax.Device] | None = None) -> JaxEngine:
    """Load the model named by `settings` and build an engine on `devices` (default: all)."""
    validate_settings(settings)
    enable_compilation_cache(settings.compilation_cache_dir)
    return JaxEngine(settings, model_for(settings, devices), devices)
