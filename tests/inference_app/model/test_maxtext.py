"""MaxText (Orbax) checkpoints: a tiny Llama written as MaxText writes it (float, and int8 as
AQT freezes it) restores to the same logits and greedy tokens as the same weights loaded from
Hugging Face safetensors; the restore-route decision under Pathways; clear errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from inference_app.engine import EngineSettings
from inference_app.engine.engine import model_for
from inference_app.engine.settings import SettingsError
from inference_app.model import catalog, maxtext
from inference_app.model.catalog import Architecture
from inference_app.model.loader import LoadedModel, checkpoint_format, load_model
from inference_app.model.transformer import QInt8, prefill
from tests.inference_app.model import maxtext_checkpoint as mt

PROMPT = [17, 250, 3, 9000, 41, 41, 7, 1234, 5, 48000, 77, 2, 600, 12, 13, 14]
STEPS = 12


@pytest.fixture(scope="module")
def tiny_dir(tiny_llama_dir: Path) -> Path:
    return tiny_llama_dir


def _register(monkeypatch: pytest.MonkeyPatch, tiny_dir: Path, interleaved: bool) -> str:
    from inference_app.model.weights_hf import HFCheckpoint

    name = "tiny-llama3.1" if interleaved else "tiny-llama2"
    arch = Architecture(HFCheckpoint(str(tiny_dir)).config, rope_interleaved=interleaved)
    monkeypatch.setitem(catalog.ARCHITECTURES, name, arch)
    return name


def _placed(model: LoadedModel) -> Any:
    """Params placed on one device the way the engine places them (weights.place)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), ("fsdp", "autoregressive", "tensor"))
    rep = NamedSharding(mesh, PartitionSpec())
    return model.weights.place(jax.tree.map(lambda _: rep, model.weights.abstract()))


_FWD = jax.jit(prefill, static_argnums=1, static_argnames="all_logits")


def _logits_and_greedy(params: Any, model: LoadedModel) -> tuple[np.ndarray, list[int]]:
    """Prompt logits and STEPS greedy tokens, re-running the prompt (one padded shape, one compile)."""
    ids = np.zeros((1, len(PROMPT) + STEPS), np.int32)
    ids[0, : len(PROMPT)] = PROMPT
    first = None
    for n in range(len(PROMPT), len(PROMPT) + STEPS):
        logits, _ = _FWD(params, model.config, ids, np.asarray([n], np.int32), all_logits=True)
        if first is None:
            first = np.asarray(logits[0, : len(PROMPT)])
        ids[0, n] = int(np.argmax(np.asarray(logits[0, n - 1])))
    assert first is not None
    return first, ids[0, len(PROMPT) :].tolist()


@pytest.mark.parametrize("interleaved", [True, False], ids=["llama3.1-pairs", "halves"])
def test_float_checkpoint_restores_to_hf_logits(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interleaved: bool
) -> None:
    name = _register(monkeypatch, tiny_dir, interleaved)
    ckpt = mt.write_maxtext(mt.maxtext_tree(tiny_dir, interleaved), tmp_path / "0" / "items")
    assert checkpoint_format(str(ckpt)) == "maxtext"
    restored = load_model(str(ckpt), np.float32, model_name=name, tokenizer_path=str(tiny_dir))
    reference = load_model(str(tiny_dir), np.float32)
    ours, ours_tokens = _logits_and_greedy(_placed(restored), restored)
    ref, ref_tokens = _logits_and_greedy(_placed(reference), reference)
    assert ref.std() > 0.1
    np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=0)
    assert ours_tokens == ref_tokens
    assert restored.tokenizer.encode("hello 123") == reference.tokenizer.encode("hello 123")


def test_int8_checkpoint_restores_to_the_weights_it_stands_for(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An AQT int8 checkpoint (checkpoint_is_quantized=true) vs its dequantized weights saved as
    safetensors and quantized by our HF loader: the same int8 values and scales, same logits."""
    name = _register(monkeypatch, tiny_dir, True)
    aqt, rest = mt.quantize_tree(mt.maxtext_tree(tiny_dir, True))
    ckpt = mt.write_maxtext((aqt, rest), tmp_path / "int8" / "0" / "items")
    hf = mt.write_hf_from_maxtext(mt.dequantized_tree(aqt, rest), tiny_dir, tmp_path / "hf", interleaved=True)
    restored = load_model(
        str(ckpt), np.float32, matrices="int8", model_name=name, tokenizer_path=str(tiny_dir)
    )
    reference = load_model(str(hf), np.float32, matrices="int8")
    ours_p, ref_p = _placed(restored), _placed(reference)
    for key in ("wqkv", "wo", "w_gate_up", "w_down"):
        a, b = ours_p["layers"][1][key], ref_p["layers"][1][key]
        assert isinstance(a, QInt8) and isinstance(b, QInt8)
        np.testing.assert_array_equal(np.asarray(a.q), np.asarray(b.q), err_msg=key)
        np.testing.assert_allclose(np.asarray(a.scale), np.asarray(b.scale), rtol=1e-6, err_msg=key)
    # MaxText never quantizes the embedding and LM head: both sides quantize them, we on
    # device, where a division may round 1 ulp away from numpy's (see maxtext.quantize_rows).
    for key in ("embed", "lm_head"):
        a, b = ours_p[key], ref_p[key]
        off = np.abs(np.asarray(a.q, np.int32) - np.asarray(b.q, np.int32))
        assert off.max() <= 1 and off.mean() < 1e-3, key
        np.testing.assert_allclose(np.asarray(a.scale), np.asarray(b.scale), rtol=1e-6, err_msg=key)
    ours, ours_tokens = _logits_and_greedy(ours_p, restored)
    ref, ref_tokens = _logits_and_greedy(ref_p, reference)
    np.testing.assert_allclose(ours, ref, atol=1e-2, rtol=0)
    assert np.mean(np.abs(ours - ref) > 1e-5) < 1e-3
    assert ours_tokens == ref_tokens
    # Serving the int8 checkpoint as float dequantizes it: the same logits as the float copy.
    as_float = load_model(str(ckpt), np.float32, model_name=name, tokenizer_path=str(tiny_dir))
    hf_float = load_model(str(hf), np.float32)
    np.testing.assert_allclose(
        _logits_and_greedy(_placed(as_float), as_float)[0],
        _logits_and_greedy(_placed(hf_float), hf_float)[0],
        atol=2e-5,
    )


def test_restore_route() -> None:
    env_on = {"ENABLE_PATHWAYS_PERSISTENCE": "1"}
    assert maxtext.restore_route("gs://b/ckpt", "cpu", env_on, ocdbt=True) == "client"
    assert maxtext.restore_route("/local", "tpu", {}, ocdbt=True) == "client"
    assert maxtext.restore_route("gs://b/ckpt", "proxy", env_on, ocdbt=False) == "pathways-persistence"
    assert maxtext.restore_route("gs://b/ckpt", "proxy", {}, ocdbt=False) == "client"
    with pytest.raises(maxtext.MaxTextCheckpointError, match="checkpoint_storage_use_ocdbt=false"):
        maxtext.restore_route("gs://b/ckpt", "proxy", env_on, ocdbt=True)
    with pytest.raises(maxtext.MaxTextCheckpointError, match="must be a gs:// path"):
        maxtext.restore_route("/data/ckpt", "proxy", env_on, ocdbt=False)


def test_errors_name_the_fix(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = mt.maxtext_tree(tiny_dir, True)
    ckpt = mt.write_maxtext(tree, tmp_path / "ok")
    with pytest.raises(catalog.UnknownArchitectureError, match="name its architecture with --model"):
        load_model(str(ckpt), np.float32, tokenizer_path=str(tiny_dir))
    name = _register(monkeypatch, tiny_dir, True)
    with pytest.raises(maxtext.MaxTextCheckpointError, match="--tokenizer-path"):
        load_model(str(ckpt), np.float32, model_name=name)
    with pytest.raises(ValueError, match=r"'q4_1' .* a maxtext checkpoint takes float or int8"):
        load_model(str(ckpt), np.float32, "q4_1", model_name=name, tokenizer_path=str(tiny_dir))
    blocks = EngineSettings(
        model=name, model_path=str(ckpt), tokenizer_path=str(tiny_dir), weight_dtype="q4_1"
    )
    with pytest.raises(
        SettingsError, match=r"--weight-dtype q4_1 does not fit --model-path .*int8 fit every"
    ):
        model_for(blocks)
    small = dataclasses.replace(catalog.ARCHITECTURES[name].config, hidden_size=32)
    monkeypatch.setitem(catalog.ARCHITECTURES, "wrong", Architecture(small, True))
    with pytest.raises(maxtext.MaxTextCheckpointError, match="expected shape"):
        load_model(str(ckpt), np.float32, model_name="wrong", tokenizer_path=str(tiny_dir))
    layers = {k: v for k, v in tree["decoder"].items() if k.startswith("layers_")}
    scanned = {k: v for k, v in tree["decoder"].items() if not k.startswith("layers_")}
    scanned["layers"] = jax.tree.map(lambda *xs: np.stack(xs, axis=1), *layers.values())
    ck2 = mt.write_maxtext(
        {"decoder": scanned, "token_embedder": tree["token_embedder"]}, tmp_path / "scanned"
    )
    with pytest.raises(maxtext.MaxTextCheckpointError, match="scanned"):
        load_model(str(ck2), np.float32, model_name=name, tokenizer_path=str(tiny_dir))
