"""A randomly initialised Llama-3.1-style checkpoint written by transformers (test helper).

GQA (8 query / 4 KV heads, so tensor parallelism of 2 or 4 splits whole heads), llama3 rope
scaling with a short original context so the scaling changes positions we actually test, an
untied LM head, and SmolLM2's tokenizer saved as `tokenizer.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from inference_app.model.catalog import embedded_model_path
from inference_app.model.weights_gguf import gguf_tokenizer, open_gguf

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tiny_llama(directory: Path, seed: int = 0) -> Path:
    """Write config.json, model.safetensors, tokenizer.json, tokenizer_config.json; return the dir."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    kwargs: dict[str, Any] = dict(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=16,
        rms_norm_eps=1e-5,
        max_position_embeddings=1024,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
        tie_word_embeddings=False,
        eos_token_id=2,
        bos_token_id=1,
    )
    config = LlamaConfig(**kwargs)
    model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():  # random init is tiny; widen it so logits actually differ between tokens
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(4.0)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tok = gguf_tokenizer(open_gguf(str(embedded_model_path("smollm2-135m"))))
    tok.backend.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": CHAT_TEMPLATE, "eos_token": "<|im_end|>", "bos_token": "<|im_start|>"})
    )
    return directory
