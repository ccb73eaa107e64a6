"""lm-eval's `local-completions` model on small local datasets: a generate_until task, and a
multiple-choice (loglikelihood) task whose requests are token-id prompts with `echo`, `logprobs: 1`
and `max_tokens: 1`. With its default `tokenizer_backend=auto` it finds our vLLM-style
`/tokenizer_info` and `/tokenize` routes and uses the server's tokenizer: no Hugging Face download
anywhere. The loglikelihoods are checked against a plain forward of the weights the server
serves (`transformer.prefill` on what `model_for` loads by default: the GGUF's blocks through the
native kernels, which tests/inference_app/model/test_quant_model.py checks against transformers
within the activation rounding; float32, checked exactly, where the kernels are not built)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jax
import numpy as np

from inference_app.engine import EngineSettings
from inference_app.engine.engine import model_for
from inference_app.kernels import build
from inference_app.kernels.ops import NATIVE_CPU, PURE_JAX
from inference_app.model.transformer import prefill
from tests.inference_app.serving_cases import ServerProcess

QUESTIONS = [("What is the capital of France?", "Paris"), ("What is 2 + 2?", "4"), ("Name a color.", "Red")]


def run_local_task(server: ServerProcess, path: Path, task: str) -> dict[str, Any]:
    """lm-eval's `local-completions` on one task written under `path`, with a task registry of
    only those (indexing its thousands of built-in task files took about 14 s of CPU per test and
    changes nothing in how it calls the server). lm-eval is imported here, not at the top: every
    pytest-xdist worker imports every test module to collect it, and only one runs these."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    model = httpx.get(f"{server.base}/v1/models", timeout=30).json()["data"][0]["id"]
    results = simple_evaluate(
        model="local-completions",
        model_args=f"base_url={server.base}/v1/completions,model={model},num_concurrent=2,max_retries=1",
        tasks=[task],
        task_manager=TaskManager(include_path=str(path), include_defaults=False),
        log_samples=True,
    )
    assert results is not None
    return dict(results)


def test_generate_until_runs_to_completion(server: ServerProcess, tmp_path: Path) -> None:
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QUESTIONS))
    (tmp_path / "qa.yaml").write_text(
        "task: local_qa\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: generate_until\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_target: "{{answer}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n"
    )
    results = run_local_task(server, tmp_path, "local_qa")
    samples = results["samples"]["local_qa"]
    assert len(samples) == len(QUESTIONS)
    assert all(isinstance(s["resps"][0][0], str) for s in samples)
    assert "exact_match,none" in results["results"]["local_qa"]


# lm-eval joins context and choice with its default target_delimiter, a space
CHOICES = [
    ("The capital of France is", ["Paris", "Berlin", "a banana"], 0),
    ("Two plus two equals", ["four", "seven"], 0),
    ("The sky on a clear day is", ["blue", "green", "made of cheese"], 0),
]


def reference_loglikelihoods(pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
    """(sum of the continuation's log-probabilities, whether greedy decoding yields it) per pair,
    from one forward of the embedded model as the server loads it by default (the same
    `model_for` and kernels), split as lm-eval splits a causal pair: the whole text encoded, the
    context's tokens first."""
    model = model_for(EngineSettings())
    kernels = NATIVE_CPU if build.available() else PURE_JAX
    tok = model.tokenizer
    encoded = []
    for ctx, cont in pairs:
        whole, n_ctx = tok.encode(ctx + cont), len(tok.encode(ctx))
        encoded.append((whole, n_ctx))
    width = max(len(w) for w, _ in encoded)
    tokens = np.zeros((len(encoded), width), np.int32)
    for i, (whole, _) in enumerate(encoded):
        tokens[i, : len(whole)] = whole  # right padding changes no earlier position's logits
    lengths = np.asarray([len(w) for w, _ in encoded], np.int32)
    fwd = jax.jit(prefill, static_argnums=1, static_argnames=("all_logits", "kernels"))
    logits, _ = fwd(model.params, model.config, tokens, lengths, all_logits=True, kernels=kernels)
    logprobs = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    out = []
    for i, (whole, n_ctx) in enumerate(encoded):
        positions = range(n_ctx - 1, len(whole) - 1)  # row p predicts token p + 1
        total = sum(float(logprobs[i, p, whole[p + 1]]) for p in positions)
        greedy = all(int(np.argmax(logprobs[i, p])) == whole[p + 1] for p in positions)
        out.append((total, greedy))
    return out


def test_loglikelihood_task_matches_a_forward_of_the_model(server: ServerProcess, tmp_path: Path) -> None:
    data = tmp_path / "mc.jsonl"
    data.write_text(
        "".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in CHOICES)
    )
    (tmp_path / "mc.yaml").write_text(
        "task: local_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    results = run_local_task(server, tmp_path, "local_mc")
    samples = sorted(results["samples"]["local_mc"], key=lambda s: s["doc_id"])
    assert len(samples) == len(CHOICES)
    pairs = [(q, " " + c) for q, choices, _ in CHOICES for c in choices]
    expected = iter(reference_loglikelihoods(pairs))
    for sample, (_, choices, _) in zip(samples, CHOICES, strict=True):
        served = [r[0] for r in sample["resps"]]  # one (loglikelihood, is_greedy) per choice
        assert len(served) == len(choices)
        for (ll, greedy), (ref_ll, ref_greedy) in zip(served, [next(expected) for _ in choices], strict=True):
            assert abs(ll - ref_ll) < 1e-3 * max(1.0, abs(ref_ll)), (ll, ref_ll)
            assert greedy == ref_greedy
    assert "acc,none" in results["results"]["local_mc"]
