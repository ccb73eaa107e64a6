"""The native CPU kernels against NumPy references, their fallbacks, and the engine with and
without them (same greedy tokens on the real model)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inference_app.kernels import build, ops
from inference_app.model.loader import LoadedModel

pytestmark = pytest.mark.skipif(not build.available(), reason="no C++ compiler: kernels not built")

RNG = np.random.default_rng(7)


def reference_attention(
    q: np.ndarray, kc: np.ndarray, vc: np.ndarray, slots: np.ndarray, pos: np.ndarray, scale: float
) -> np.ndarray:
    out = np.zeros(q.shape, np.float64)
    for r in range(q.shape[0]):
        if not (0 <= slots[r] < kc.shape[0] and 0 <= pos[r] < kc.shape[2]):
            continue  # padding row: zeros
        n = pos[r] + 1
        s = np.einsum("kgd,ktd->kgt", q[r], kc[slots[r], :, :n]) * scale
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[r] = np.einsum("kgt,ktd->kgd", p, vc[slots[r], :, :n])
    return out


attention = jax.jit(ops.attention, static_argnums=5)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("k,n", [(576, 960), (50, 33)])
def test_int8_matmul_matches_numpy(m: int, k: int, n: int) -> None:
    x = RNG.standard_normal((m, k)).astype(np.float32)
    q = RNG.integers(-127, 128, (n, k)).astype(np.int8)
    scale = RNG.random(n).astype(np.float32)
    want = x.astype(np.float64) @ (q.astype(np.float64) * scale[:, None]).T
    got = np.asarray(jax.jit(ops.matmul_s8)(x, q, scale))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3 * np.abs(want).max())


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("m", [1, 3, 4])
@pytest.mark.parametrize("k,n", [(576, 1536), (37, 13)])
def test_dense_matmul_matches_numpy(dtype: jnp.dtype, m: int, k: int, n: int) -> None:
    x = RNG.standard_normal((m, k)).astype(np.float32)
    w = jnp.asarray(RNG.standard_normal((k, n)), dtype)
    want = x.astype(np.float64) @ np.asarray(w.astype(jnp.float32), np.float64)
    got = np.asarray(jax.jit(ops.matmul_dense)(x, w))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize(
    "rows,via_table", [(1, False), (4, False), (5, True), (32, True), (63, True), (64, False)]
)
def test_tied_head_picks_table_or_copy_by_rows_with_the_same_logits(rows: int, via_table: bool) -> None:
    """A tied float head multiplies by the [V, D] table from 5 to 63 rows on the CPU path (faster
    there) and by its [D, V] copy otherwise; the logits are the same product either way."""
    from inference_app.kernels.ops import NATIVE_CPU, PURE_JAX
    from inference_app.model.config import ModelConfig
    from inference_app.model.transformer import lm_head, tied_table_is_faster

    cfg = ModelConfig(
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=32,
        hidden_size=64,
        ffn_size=128,
        vocab_size=1000,
        tie_embeddings=True,
    )
    table = RNG.standard_normal((1000, 64)).astype(np.float32)
    params = {"embed": jnp.asarray(table), "lm_head": jnp.asarray(table.T.copy()), "final_norm": jnp.ones(64)}
    x = jnp.asarray(RNG.standard_normal((rows, 64)).astype(np.float32))
    assert tied_table_is_faster(params, cfg, x, NATIVE_CPU) is via_table
    assert not tied_table_is_faster(params, cfg, x, PURE_JAX)
    assert not tied_table_is_faster(params, cfg, x.astype(jnp.bfloat16), NATIVE_CPU)
    xn = np.asarray(x, np.float64)
    want = (xn / np.sqrt((xn * xn).mean(-1, keepdims=True) + cfg.rms_eps)) @ table.astype(np.float64).T
    for kernels in (NATIVE_CPU, PURE_JAX):
        got = np.asarray(jax.jit(lambda p, x, k=kernels: lm_head(p, cfg, x, k))(params, x))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("d", [64, 12])  # 12: the scalar path for head dims not a multiple of 8
def test_decode_attention_matches_numpy(d: int) -> None:
    b, kvh, g, n_slots, t = 4, 3, 3, 6, 40
    q = RNG.standard_normal((b, kvh, g, d)).astype(np.float32)
    kc = RNG.standard_normal((n_slots, kvh, t, d)).astype(np.float32) * 3
    vc = RNG.standard_normal((n_slots, kvh, t, d)).astype(np.float32)
    slots = np.arange(b, dtype=np.int32)
    pos = np.array([0, 5, 17, t - 1], np.int32)  # lengths 1 (softmax of one), < 8, > 8, full
    got = np.asarray(attention(q, kc, vc, slots, pos, 0.125))
    np.testing.assert_allclose(got, reference_attention(q, kc, vc, slots, pos, 0.125), rtol=1e-5, atol=1e-5)


def test_ragged_attention_mixes_decode_rows_prompt_chunks_and_padding() -> None:
    """Rows of one step: decode rows of two slots, a prompt chunk (slot 4, positions 3..9) and
    padding rows (out-of-range slot or position), in any order."""
    kvh, g, d, n_slots, t = 3, 3, 64, 6, 40
    slots = np.array([1, 4, 4, 4, 4, 4, 4, 4, 0, 6, 2, -1, 5], np.int32)
    pos = np.array([20, 3, 4, 5, 6, 7, 8, 9, 39, 0, t, 0, -1], np.int32)
    q = RNG.standard_normal((len(slots), kvh, g, d)).astype(np.float32)
    kc = RNG.standard_normal((n_slots, kvh, t, d)).astype(np.float32) * 3
    vc = RNG.standard_normal((n_slots, kvh, t, d)).astype(np.float32)
    got = np.asarray(attention(q, kc, vc, slots, pos, 0.125))
    np.testing.assert_allclose(got, reference_attention(q, kc, vc, slots, pos, 0.125), rtol=1e-5, atol=1e-5)
    assert not got[9:].any()  # padding rows: zeros


def test_decode_attention_ignores_entries_after_position() -> None:
    q = RNG.standard_normal((1, 1, 2, 16)).astype(np.float32)
    kc = RNG.standard_normal((1, 1, 10, 16)).astype(np.float32)
    vc = RNG.standard_normal((1, 1, 10, 16)).astype(np.float32)
    pos = np.array([4], np.int32)
    slots = np.zeros(1, np.int32)

    def f(q: np.ndarray, kc: np.ndarray, vc: np.ndarray, pos: np.ndarray, scale: float) -> jax.Array:
        return attention(q, kc, vc, slots, pos, scale)

    before = np.asarray(f(q, kc, vc, pos, 0.25))
    kc[:, :, 5:] = 1e6  # stale entries from an earlier occupant of the slot
    vc[:, :, 5:] = np.nan
    np.testing.assert_array_equal(np.asarray(f(q, kc, vc, pos, 0.25)), before)


@pytest.mark.parametrize("n", [49152, 13])
def test_argmax_is_first_maximum(n: int) -> None:
    x = RNG.standard_normal((5, n)).astype(np.float32)
    x[1, n // 2] = x[1, n - 1] = 99.0  # tie: the first index wins, as in jnp.argmax
    np.testing.assert_array_equal(np.asarray(jax.jit(ops.argmax)(x)), np.argmax(x, axis=-1))


def test_concurrent_callers_get_their_own_results() -> None:
    """Two threads at once: the second finds the pool busy and runs its chunks alone."""
    f = jax.jit(ops.matmul_s8)
    inputs = []
    for _ in range(2):
        x = RNG.standard_normal((1, 576)).astype(np.float32)
        q = RNG.integers(-127, 128, (4096, 576)).astype(np.int8)
        s = RNG.random(4096).astype(np.float32)
        inputs.append((x, q, s, np.asarray(f(x, q, s))))
    errors: list[str] = []

    def hammer(i: int) -> None:
        x, q, s, want = inputs[i]
        for _ in range(50):
            if not np.array_equal(np.asarray(f(x, q, s)), want):
                errors.append(f"thread {i}: result changed")
                return

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []


def run_available(env: dict[str, str]) -> str:
    code = "from inference_app.kernels import build; print(build.available())"
    proc = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip() + "\n" + proc.stderr


def test_switch_off_and_missing_compiler_fall_back(tmp_path: Path) -> None:
    off = run_available({build.ENV_SWITCH: "0"})
    assert off.startswith("False")
    broken = run_available({"CXX": "/bin/false", build.ENV_CACHE_DIR: str(tmp_path)})
    assert broken.startswith("False") and "pure-JAX path" in broken
    assert list(tmp_path.iterdir()) == []  # no partial library left behind


def test_engine_with_and_without_kernels_agree_on_logprobs(smollm2_4_layers: LoadedModel) -> None:
    """Every token's log-probability and its 5 most likely alternatives, at batch 1 and batch 3, are
    the same either way within float32 rounding (the kernels sum in another order than XLA).
    Compared as numbers, so SmolLM2's first 4 layers do (their text is degenerate)."""
    from inference_app.engine import EngineSettings
    from inference_app.engine.engine import JaxEngine
    from tests.inference_app.engine_runs import assert_same_logprobs, decode_logprobs

    prompts = [[1, 504, 3458, 282], [1, 19842, 28, 638, 314, 253, 1345, 30, 1208], [1, 2683, 314]]
    runs = {}
    for on in (True, False):
        settings = EngineSettings(max_slots=4, max_prefill_length=32, max_target_length=64, cpu_kernels=on)
        engine = JaxEngine(settings, smollm2_4_layers)
        assert engine.policy.kernels.cpu is on
        runs[on] = decode_logprobs(engine, prompts[:1], 16) + decode_logprobs(engine, prompts, 16)
    assert_same_logprobs(runs[True], runs[False])


@pytest.mark.slow  # the default suite compares logprobs on 4 layers (above)
def test_engine_with_and_without_kernels_agree(smollm2: LoadedModel) -> None:
    """Greedy tokens of the real model are the same either way, at batch 1 and batch 3."""
    from inference_app.engine import EngineSettings
    from inference_app.engine.engine import JaxEngine
    from tests.inference_app.engine_runs import decode_greedy

    prompts = [[1, 504, 3458, 282], [1, 19842, 28, 638, 314, 253, 1345, 30, 1208], [1, 2683, 314]]
    runs = {}
    for on in (True, False):
        engine = JaxEngine(
            EngineSettings(max_slots=4, max_prefill_length=32, max_target_length=64, cpu_kernels=on), smollm2
        )
        assert engine.policy.kernels.cpu is on
        runs[on] = (decode_greedy(engine, prompts[:1], 24), decode_greedy(engine, prompts, 24))
    assert runs[True] == runs[False]


@pytest.mark.parametrize("n,kvh,g,d", [(1, 1, 1, 2), (37, 3, 3, 64), (300, 2, 4, 32)])
def test_rope_qkv_is_the_models_rotation_to_the_bit(n: int, kvh: int, g: int, d: int) -> None:
    """The native split-and-rotate of the fused QKV output gives transformer.rope's bits (the
    float32 model must stay exact against transformers), and v unchanged."""
    from inference_app.model.transformer import rope

    y = jnp.asarray(RNG.standard_normal((n, kvh, g + 2, d)).astype(np.float32))
    ang = RNG.integers(0, 8192, n)[:, None] * (1.0 / 10000 ** (np.arange(0, d, 2) / d))[None]
    cos, sin = jnp.asarray(np.cos(ang), jnp.float32), jnp.asarray(np.sin(ang), jnp.float32)
    q, k, v = jax.jit(ops.rope_qkv)(y, cos, sin)
    want_q = jax.jit(lambda y, c, s: rope(y[:, :, :g], (c, s)))(y, cos, sin)
    want_k = jax.jit(lambda y, c, s: rope(y[:, :, g], (c, s)))(y, cos, sin)
    np.testing.assert_array_equal(np.asarray(q), np.asarray(want_q))
    np.testing.assert_array_equal(np.asarray(k), np.asarray(want_k))
    np.testing.assert_array_equal(np.asarray(v), np.asarray(y[:, :, g + 1]))
