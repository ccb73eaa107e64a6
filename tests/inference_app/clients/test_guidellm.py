"""guidellm (the vLLM project's serving benchmark) with its default backend settings: it probes
`GET /health`, takes the model from `/v1/models`, streams chat requests whose content is a list of
text parts with `stream_options` and `ignore_eos`. Both runs must finish with zero errored requests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.inference_app.serving_cases import ServerProcess


@pytest.mark.parametrize("profile", ["kind=synchronous", "kind=concurrent,streams=3"])
def test_a_short_run_has_no_errors(
    server: ServerProcess, tokenizer_dir: Path, tmp_path: Path, profile: str
) -> None:
    out = tmp_path / "out.json"
    cmd = [
        sys.executable, "-m", "guidellm", "run",
        "--backend", f"kind=openai_http,target={server.base}",
        "--profile", profile,
        "--constraint", "kind=max_requests,count=6",
        "--data", "kind=synthetic_text,prompt_tokens=24,output_tokens=8",
        "--tokenizer", f"kind=huggingface_auto,model={tokenizer_dir}",
        "--output", f"kind=json,path={out}",
        "--disable-console-interactive",
    ]  # fmt: skip
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    totals = json.loads(out.read_text())["benchmarks"][0]["metrics"]["request_totals"]
    # guidellm may close its measured window before counting the last of the 6 it sent (seen: a
    # synchronous run reporting 5 successful of 5): every counted request must have succeeded.
    assert totals["errored"] == 0 and totals["incomplete"] == 0, totals
    assert totals["successful"] == totals["total"] >= 5, totals
