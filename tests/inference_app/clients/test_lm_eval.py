"""lm-eval's `local-completions` model on a small local dataset (generate_until). With its default
`tokenizer_backend=auto` it finds our vLLM-style `/tokenizer_info` and `/tokenize` routes and uses
the server's tokenizer, then sends token-id prompts: no Hugging Face download anywhere."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager

from tests.inference_app.serving_cases import ServerProcess

QUESTIONS = [("What is the capital of France?", "Paris"), ("What is 2 + 2?", "4"), ("Name a color.", "Red")]


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
    model = httpx.get(f"{server.base}/v1/models", timeout=30).json()["data"][0]["id"]
    results = simple_evaluate(
        model="local-completions",
        model_args=f"base_url={server.base}/v1/completions,model={model},num_concurrent=2,max_retries=1",
        tasks=["local_qa"],
        task_manager=TaskManager(include_path=str(tmp_path)),
        log_samples=True,
    )
    assert results is not None
    samples = results["samples"]["local_qa"]
    assert len(samples) == len(QUESTIONS)
    assert all(isinstance(s["resps"][0][0], str) for s in samples)
    assert "exact_match,none" in results["results"]["local_qa"]
