"""The engine's device programs: small pure functions that `JaxEngine` jits (and nothing else).

    prefill(params, tokens, lengths)               whole prompts -> last-token logits + their KV
    insert(cache, state, kv, slot, first)          a prefilled prompt's KV lands in a slot
    insert_paged(..., block_tables)                the same into the slot's blocks (paged cache)
    step(params, cache, state, inputs)             one step over token rows -> sampled rows' logits
    copy_blocks(cache, src, dst, count)            paged cache: block src[i] copied to dst[i]
    choose(logits, picks)                          logits -> tokens (+ log-probabilities)
    choose_into(state, logits, picks)              the same, the tokens written into `state`
    score(params, tokens, lengths)                 a prompt -> its own tokens' log-probabilities

`state` is the int32 [max_slots] vector of every slot's latest token: a decode row reads its
input from it on device, and `choose_into` writes the tokens a step samples back into it, so the
host never waits for a step's tokens before dispatching the next. A step's rows are laid out on
the host (`step_plan.py`) and passed as one `StepInputs` pytree.

The model's programs (`prefill`, `step`) end at the logits; choosing tokens from them is a
program of its own. What decides how tokens are chosen (all greedy or not, log-probabilities
wanted, token masks for structured outputs) then compiles only that small program, once per
count of sampled rows, instead of another variant of the whole model per step shape: the sampler
(a sort of the vocabulary, a cumulative sum, the random draw) was about 0.9 s of every step
shape's compilation. A masked choice samples from the masked logits while its log-probabilities
stay those of the raw logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from inference_app.engine import sampling
from inference_app.engine.api import MAX_TOP_LOGPROBS, SamplingParams, StepLogprobs
from inference_app.engine.sampling import Sampler
from inference_app.engine.token_mask import constrain
from inference_app.kernels.ops import KernelChoice
from inference_app.model.config import ModelConfig
from inference_app.model.paged_attention import (
    AttentionKernel,
    PagedAttention,
    PagedLayout,
    RaggedSequences,
    token_blocks,
    write_kv,
)
from inference_app.model.transformer import (
    Attention,
    LayerKV,
    Params,
    RaggedKernelAttention,
    SlotAttention,
    forward,
    lm_head,
    quantize_kv,
)
from inference_app.model.transformer import prefill as prefill_logits

jax.tree_util.register_dataclass(
    StepLogprobs, data_fields=["tokens", "chosen", "top_ids", "top_logprobs"], meta_fields=[]
)

# How a step's rows meet the cache (see model/transformer.py): "ragged_kernel" reads any slot at
# any position in place (CPU kernel); "slot" is pure JAX, row i being slot i; "paged" reads the
# paged cache through its block tables (model/paged_attention.py, with the kernel `Paged` names).
AttentionKind = Literal["ragged_kernel", "slot", "paged"]


@dataclass(frozen=True)
class Paged:
    """Static description of a paged cache: its layout and the kernel that reads it."""

    kernel: AttentionKernel
    layout: PagedLayout


@partial(
    jax.tree_util.register_dataclass, data_fields=["temperature", "top_k", "top_p", "seeds"], meta_fields=[]
)
@dataclass(frozen=True)
class SamplingRows:
    """Sampling parameters per sampled row, arrays [R] (see `sampling.sample`)."""

    temperature: Any  # float32
    top_k: Any  # int32
    top_p: Any  # float32
    seeds: Any  # uint32

    @classmethod
    def of(cls, params: Sequence[SamplingParams]) -> SamplingRows:
        return cls(
            np.array([p.temperature for p in params], np.float32),
            np.array([p.top_k for p in params], np.int32),
            np.array([p.top_p for p in params], np.float32),
            np.array([(p.seed or 0) % 2**32 for p in params], np.uint32),
        )


@partial(jax.tree_util.register_dataclass, data_fields=["slots", "sampling", "at", "mask"], meta_fields=[])
@dataclass(frozen=True)
class Picks:
    """The rows a step or a prefill chooses tokens for, arrays [R]: how each is drawn, and for a
    step the slot its token goes to (`max_slots`: a padding row, dropped)."""

    slots: Any  # int32 [R]
    sampling: SamplingRows
    at: Any  # int32 [R]: the position each token will sit at (it picks the random key)
    # int32 [R, ceil(V/32)]: each row's allowed tokens (`token_mask.py`); None: no row is
    # constrained (the choice compiles without masks)
    mask: Any = None


@partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "tokens",
        "from_state",
        "slots",
        "positions",
        "logit_rows",
        "block_tables",
        "sequences",
    ],
    meta_fields=[],
)
@dataclass(frozen=True)
class StepInputs:
    """One step's token rows. Padding rows name slot `max_slots` and position `max_target_length`
    (out of range: they write nothing)."""

    tokens: Any  # int32 [N]: prompt tokens (decode rows take theirs from `state`)
    from_state: Any  # bool [N]: decode rows
    slots: Any  # int32 [N]
    positions: Any  # int32 [N]
    logit_rows: Any  # int32 [R]: rows whose next token is sampled (their logits are returned)
    # Paged cache only: every slot's block table (int32 [max_slots, max blocks], -1 unassigned)
    # and, for the Pallas kernel, the rows grouped by sequence.
    block_tables: Any = None
    sequences: RaggedSequences | None = None


def logprobs_of(logits: jax.Array, tokens: jax.Array) -> StepLogprobs:
    """logits [..., V] and the tokens chosen from them [...] -> their log-probabilities under the
    raw distribution (no temperature or truncation) and the MAX_TOP_LOGPROBS most likely."""
    lp = jax.nn.log_softmax(logits, axis=-1)
    top_lp, top_ids = jax.lax.top_k(lp, MAX_TOP_LOGPROBS)
    chosen = jnp.take_along_axis(lp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return StepLogprobs(tokens.astype(jnp.int32), chosen, top_ids.astype(jnp.int32), top_lp)


def prefill(
    params: Params, tokens: jax.Array, lengths: jax.Array, *, cfg: ModelConfig, kernels: KernelChoice
) -> tuple[jax.Array, list[LayerKV]]:
    """Prompts tokens [B, S] (right-padded to a bucket; real lengths [B]) -> (the logits of each
    prompt's last token [B, V], the prompts' KV per layer [B, KVH, S, Dh]); `choose` picks the
    first tokens."""
    return prefill_logits(params, cfg, tokens, lengths, kernels=kernels)


def choose(
    logits: jax.Array, picks: Picks, *, kernels: KernelChoice, sampler: Sampler, logprobs: bool
) -> tuple[jax.Array, StepLogprobs | None]:
    """Tokens [R] from logits [R, V] as `picks` says, and their log-probabilities when `logprobs`.
    `sampler` (`sampling.Sampler`): how the rows draw, the cheapest way that serves them all."""
    allowed = constrain(logits, picks.mask)  # sampled from; log-probabilities read `logits`
    r = picks.sampling
    if sampler == "greedy":
        tokens = sampling.greedy(allowed, kernels)
    elif sampler == "full":
        tokens = sampling.sample_full(allowed, r.temperature, r.seeds, picks.at, kernels)
    else:
        tokens = sampling.sample(allowed, r.temperature, r.top_k, r.top_p, r.seeds, picks.at, kernels)
    return tokens, logprobs_of(logits, tokens) if logprobs else None


def sampler_for(rows: SamplingRows) -> Sampler:
    """The cheapest sampler that draws every row as its settings ask (host arrays)."""
    sampled = rows.temperature > 0
    if not sampled.any():
        return "greedy"
    if ((rows.top_k > 0) | (rows.top_p < 1.0))[sampled].any():
        return "truncated"
    return "full"


def choose_into(
    state: jax.Array,
    logits: jax.Array,
    picks: Picks,
    *,
    kernels: KernelChoice,
    sampler: Sampler,
    logprobs: bool,
) -> tuple[jax.Array, StepLogprobs | None]:
    """`choose` for a step: the tokens go into `state` at `picks.slots`, and the log-probabilities
    (when `logprobs`) come back per slot [max_slots]."""
    tokens, lp = choose(logits, picks, kernels=kernels, sampler=sampler, logprobs=logprobs)
    state = state.at[picks.slots].set(tokens.astype(state.dtype), mode="drop")
    if lp is None:
        return state, None

    def by_slot(a: jax.Array) -> jax.Array:
        return jnp.zeros((state.shape[0], *a.shape[1:]), a.dtype).at[picks.slots].set(a, mode="drop")

    return state, jax.tree.map(by_slot, lp)


def score(
    params: Params, tokens: jax.Array, lengths: jax.Array, *, cfg: ModelConfig, kernels: KernelChoice
) -> StepLogprobs:
    """Prompts tokens [B, S] (right-padded) -> rows [B, S - 1]: row p holds token p + 1's
    log-probability given tokens 0..p (rows past a prompt's length are junk)."""
    logits, _ = prefill_logits(params, cfg, tokens, lengths, kernels=kernels, all_logits=True)
    return logprobs_of(logits[:, :-1], tokens[:, 1:])


def insert(
    cache: list[LayerKV], state: jax.Array, kv: list[LayerKV], slot: jax.Array, first: jax.Array
) -> tuple[list[LayerKV], jax.Array]:
    """Write one prompt's KV [1, KVH, S, Dh] into `slot` from position 0 (quantizing for an int8
    cache) and its first token into `state`."""
    out = []
    for c, p in zip(cache, kv, strict=True):
        n = dict(c)
        for name in ("k", "v"):
            x = p[name]
            if name + "_scale" in c:
                q, sc = quantize_kv(x)
                n[name] = jax.lax.dynamic_update_slice(c[name], q, (slot, 0, 0, 0))
                n[name + "_scale"] = jax.lax.dynamic_update_slice(c[name + "_scale"], sc, (slot, 0, 0))
            else:
                n[name] = jax.lax.dynamic_update_slice(c[name], x.astype(c[name].dtype), (slot, 0, 0, 0))
        out.append(n)
    return out, state.at[slot].set(first)


def insert_paged(
    cache: list[LayerKV],
    state: jax.Array,
    kv: list[LayerKV],
    slot: jax.Array,
    first: jax.Array,
    block_tables: jax.Array,
    *,
    layout: PagedLayout,
) -> tuple[list[LayerKV], jax.Array]:
    """`insert` into a paged cache: the prompt's KV [1, KVH, S, Dh] goes to positions 0..S-1 of
    the slot's blocks (positions past its blocks drop: the padding of the prompt's bucket)."""
    s = kv[0]["k"].shape[2]
    positions = jnp.arange(s, dtype=jnp.int32)
    blocks, offsets = token_blocks(block_tables, jnp.full(s, slot, jnp.int32), positions, layout)
    out = []
    for c, p in zip(cache, kv, strict=True):
        k, v = p["k"][0].transpose(1, 0, 2), p["v"][0].transpose(1, 0, 2)  # [S, KVH, Dh]
        out.append({"kv": write_kv(c["kv"], layout, k, v, blocks, offsets)})
    return out, state.at[slot].set(first)


def copy_blocks(cache: list[LayerKV], src: jax.Array, dst: jax.Array, count: jax.Array) -> list[LayerKV]:
    """Every layer's paged block src[i] copied over block dst[i] for i < count, in order (a later
    copy may read an earlier one's target); src, dst int32 [C], padded past `count`. A prompt
    that shares the start of a block with an earlier one starts from its copy
    (`block_tables.py`). Blocks are axis 0 of every layout."""

    def one(i: jax.Array, layers: list[LayerKV]) -> list[LayerKV]:
        return [
            {
                name: jax.lax.dynamic_update_index_in_dim(
                    pages, jax.lax.dynamic_index_in_dim(pages, src[i], 0, keepdims=False), dst[i], 0
                )
                for name, pages in layer.items()
            }
            for layer in layers
        ]

    return jax.lax.fori_loop(0, count, one, cache)


def step(
    params: Params,
    cache: list[LayerKV],
    state: jax.Array,
    inputs: StepInputs,
    *,
    cfg: ModelConfig,
    kernels: KernelChoice,
    attention: AttentionKind,
    attn_len: int,
    paged: Paged | None = None,
) -> tuple[list[LayerKV], jax.Array]:
    """Run the rows of `inputs` through the model. Returns (the cache, the logits of the rows in
    `logit_rows` [R, V]); `choose_into` then samples them into `state`.

    With "slot" attention row i must be slot i (decode of the first N slots) and attention reads
    the first `attn_len` cache entries; "ragged_kernel" and "paged" take any rows and ignore
    `attn_len` ("paged" with the Pallas kernel: rows grouped by sequence, `inputs.sequences`).
    """
    last = state[jnp.clip(inputs.slots, 0, state.shape[0] - 1)]  # decode rows: last step's token
    tokens = jnp.where(inputs.from_state, last, inputs.tokens)
    attn: Attention
    if attention == "paged":
        if paged is None:
            raise ValueError("a paged step needs its cache layout and kernel")
        attn = PagedAttention.for_rows(
            paged.kernel,
            paged.layout,
            inputs.block_tables,
            inputs.slots,
            inputs.positions,
            seqs=inputs.sequences,
        )
    elif attention == "ragged_kernel":
        attn = RaggedKernelAttention(inputs.slots, inputs.positions)
    else:
        attn = SlotAttention.up_to(inputs.positions, attn_len)
    # Decode rows come first, in the rows and in the sampled rows (`step_plan.py`); the rest
    # are prompt rows (and padding).
    decode_rows = jnp.sum(inputs.from_state, dtype=jnp.int32)
    x, cache = forward(params, cfg, tokens, inputs.positions, attn, cache, kernels, decode_rows)
    return cache, lm_head(params, cfg, x[inputs.logit_rows], kernels, decode_rows)
