"""Known architectures by name, for checkpoints that carry no config (MaxText / Orbax).

A Hugging Face directory or a GGUF file describes its own model; a MaxText checkpoint holds only
arrays, so `--model llama3.1-405b --model-path gs://.../0/items` names the architecture here.
Names and sizes follow MaxText's `configs/models/<name>.yml` (AI-Hypercomputer/maxtext at
e591f30cbbf217ed67ef71263ec0538239f9c3b8); RoPE scaling and context lengths follow the models'
Hugging Face `config.json`. `rope_interleaved` records how MaxText stores Q/K for the name: its
attention uses `LLaMARotaryEmbedding` (adjacent rotary pairs, Meta's own order, which its
converter keeps) exactly when the model name starts with "llama3.1" (`layers/attentions.py`),
and the rotate-halves `RotaryEmbedding` (the Hugging Face order) otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from inference_app.model.config import ModelConfig, RopeScaling


@dataclass(frozen=True)
class Architecture:
    config: ModelConfig
    rope_interleaved: bool  # MaxText's Q/K layout for this name (see the module docstring)


def _llama(
    layers: int, heads: int, kv: int, d: int, ffn: int, vocab: int, theta: float, max_pos: int, scaled: bool
) -> ModelConfig:
    scaling = RopeScaling(8.0, 1.0, 4.0, 8192) if scaled else None
    return ModelConfig(
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=128,
        hidden_size=d,
        ffn_size=ffn,
        vocab_size=vocab,
        rope_theta=theta,
        rope_scaling=scaling,
        rms_eps=1e-5,
        tie_embeddings=False,
        max_position_embeddings=max_pos,
    )


ARCHITECTURES: dict[str, Architecture] = {
    "llama2-7b": Architecture(_llama(32, 32, 32, 4096, 11008, 32000, 1e4, 4096, False), False),
    "llama2-13b": Architecture(_llama(40, 40, 40, 5120, 13824, 32000, 1e4, 4096, False), False),
    "llama2-70b": Architecture(_llama(80, 64, 8, 8192, 28672, 32000, 1e4, 4096, False), False),
    "llama3-8b": Architecture(_llama(32, 32, 8, 4096, 14336, 128256, 5e5, 8192, False), False),
    "llama3-70b": Architecture(_llama(80, 64, 8, 8192, 28672, 128256, 5e5, 8192, False), False),
    "llama3.1-8b": Architecture(_llama(32, 32, 8, 4096, 14336, 128256, 5e5, 131072, True), True),
    "llama3.1-70b": Architecture(_llama(80, 64, 8, 8192, 28672, 128256, 5e5, 131072, True), True),
    "llama3.1-405b": Architecture(_llama(126, 128, 8, 16384, 53248, 128256, 5e5, 131072, True), True),
}


class UnknownArchitectureError(ValueError):
    """A checkpoint needs an architecture name that is not in `ARCHITECTURES`."""


def architecture(name: str | None, why: str) -> Architecture:
    """The named architecture, or an error listing the known names and saying `why` it is needed."""
    if name is None or name not in ARCHITECTURES:
        got = "no --model" if name is None else f"--model {name!r}"
        raise UnknownArchitectureError(f"{why}; got {got}. Known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name]
