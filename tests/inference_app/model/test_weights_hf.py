"""Hugging Face directory loading: a random Llama-3.1-style model vs transformers, within 1e-3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec
import jax
import numpy as np
import pytest

from inference_app.engine import EngineSettings, SamplingParams
from inference_app.engine.engine import JaxEngine, load_engine
from inference_app.model import quant
from inference_app.model.loader import HostWeights, load_model
from inference_app.model.quant import BlockQuant
from inference_app.model.transformer import prefill
from inference_app.model.weights_hf import HFCheckpoint

PROMPT = [17, 250, 3, 9000, 41, 41, 7, 1234, 5, 48000, 77, 2, 600, 12, 13, 14, 15, 16, 30, 31, 32, 33, 34, 35]


@pytest.fixture(scope="module")
def tiny_dir(tiny_llama_dir: Path) -> Path:
    return tiny_llama_dir


@pytest.fixture(scope="module")
def reference(tiny_dir: Path, torch: Any) -> Any:
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()


def test_config_has_gqa_and_llama3_scaling(tiny_dir: Path) -> None:
    cfg = HFCheckpoint(str(tiny_dir)).config
    assert cfg.num_heads == 8 and cfg.num_kv_heads == 4 and not cfg.tie_embeddings
    assert cfg.rope_scaling is not None and cfg.rope_scaling.factor == 8.0


def test_inv_freq_matches_transformers(tiny_dir: Path, reference: Any) -> None:
    ours = HFCheckpoint(str(tiny_dir)).config.inv_freq()
    theirs = reference.model.rotary_emb.inv_freq.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_all_position_logits_within_1e3(tiny_dir: Path, reference: Any, torch: Any) -> None:
    model = load_model(str(tiny_dir), dtype=np.float32)
    ids = np.asarray([PROMPT], np.int32)
    logits, _ = jax.jit(prefill, static_argnums=1, static_argnames="all_logits")(
        model.params, model.config, ids, np.asarray([len(PROMPT)], np.int32), all_logits=True
    )
    with torch.no_grad():
        ref = reference(torch.tensor(ids, dtype=torch.long)).logits[0].numpy()
    assert np.abs(np.asarray(logits[0]) - ref).max() < 1e-3
    assert ref.std() > 0.1  # the comparison is not between two near-constant vectors


@pytest.mark.parametrize("fmt", ["q8_0", "q4_1"])
def test_block_formats_quantize_the_float_layout_at_load(tiny_dir: Path, fmt: str) -> None:
    """llama.cpp's block formats on an HF checkpoint: built on host from the same row plans, so
    every matrix expands back to the float model's within its quantization step."""
    blocks, floats = load_model(str(tiny_dir), np.float32, fmt), load_model(str(tiny_dir), np.float32)  # type: ignore[arg-type]
    assert isinstance(blocks.weights, HostWeights) and not isinstance(floats.weights, HostWeights)
    layer, ref = blocks.params["layers"][1], floats.params["layers"][1]
    for name in ("wqkv", "wo", "w_gate_up", "w_down"):
        w = layer[name]
        assert isinstance(w, BlockQuant) and w.fmt == fmt
        want = ref[name].reshape(int(np.prod(w.in_shape)), -1).T  # [out, in]
        step = np.abs(want).max() / (15 if fmt == "q4_1" else 127)
        assert np.abs(quant.dequantize(w) - want).max() <= step
    assert blocks.params["lm_head"].fmt == fmt and "lm_head" in floats.params  # untied


@pytest.fixture(scope="module")
def tiny_engine(tiny_dir: Path) -> JaxEngine:
    return load_engine(
        EngineSettings(
            model=None, model_path=str(tiny_dir), max_slots=2, max_prefill_length=32, max_target_length=160
        )
    )


def test_engine_greedy_matches_transformers_generate(
    tiny_engine: JaxEngine, reference: Any, torch: Any
) -> None:
    steps = 40
    prefix = tiny_engine.prefill(PROMPT, SamplingParams())
    tiny_engine.insert(tiny_engine.transfer(prefix), 1)
    ours = [prefix.first_token] + [
        int(np.asarray(tiny_engine.generate().tokens)[1]) for _ in range(steps - 1)
    ]
    tiny_engine.release(1)
    with torch.no_grad():
        ref = reference.generate(
            torch.tensor([PROMPT]), max_new_tokens=steps, do_sample=False, eos_token_id=None, pad_token_id=0
        )[0, len(PROMPT) :].tolist()
    assert ours == ref


def test_tokenizer_and_template_from_files(tiny_engine: JaxEngine) -> None:
    tok = tiny_engine.tokenizer
    assert tok.eos_token_ids == frozenset({2})
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.encode("<|im_start|>")[0] == 1


def test_loads_through_fsspec_urls(tiny_dir: Path) -> None:
    """gs:// goes through the same fsspec code; memory:// proves it without a network."""
    fs = fsspec.filesystem("memory")
    for f in tiny_dir.iterdir():
        fs.pipe(f"/tiny/{f.name}", f.read_bytes())
    remote = load_model("memory://tiny", dtype=np.float32)
    local = load_model(str(tiny_dir), dtype=np.float32)
    np.testing.assert_array_equal(remote.params["layers"][1]["wqkv"], local.params["layers"][1]["wqkv"])
    assert remote.tokenizer.encode("hello 123") == local.tokenizer.encode("hello 123")


def test_missing_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        HFCheckpoint(str(tmp_path))


def test_reads_bf16_and_f16_safetensors(tmp_path: Path, torch: Any) -> None:
    """Real Llama checkpoints ship bf16, which safetensors' numpy reader cannot parse."""
    from safetensors.torch import save_file

    tensors = {
        "w_bf16": torch.randn(3, 4).to(torch.bfloat16),
        "w_f16": torch.randn(5).to(torch.float16),
        "w_f32": torch.randn(2, 2),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(
        '{"num_attention_heads": 2, "hidden_size": 8, "num_hidden_layers": 1, '
        '"intermediate_size": 8, "vocab_size": 10}'
    )
    ckpt = HFCheckpoint(str(tmp_path))
    for name, t in tensors.items():
        np.testing.assert_array_equal(ckpt.tensor(name).astype(np.float32), t.float().numpy())
