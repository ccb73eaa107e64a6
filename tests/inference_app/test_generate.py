"""`python -m inference_app generate`: output shape, chat wrapping and EOS stop, against golden data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from inference_app import generate

GOLDEN = json.loads((Path(__file__).resolve().parent.parent / "golden" / "smollm2_golden.json").read_text())


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    generate.add_arguments(parser)
    code = generate.main(parser.parse_args(list(argv)))
    out = capsys.readouterr()
    return code, out.out, out.err


def case(kind: str, index: int = 0) -> dict[str, Any]:
    return [c for c in GOLDEN["cases"] if c["kind"] == kind][index]


def test_chat_json_matches_transformers(capsys: pytest.CaptureFixture[str]) -> None:
    golden = case("chat")
    user = golden["text"].split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    code, out, _ = run(
        capsys, "--prompt", user, "--max-tokens", "8", "--chat", "--json", "--weight-dtype", "float32"
    )
    assert code == 0
    result = json.loads(out)
    assert set(result) == {"prompt_ids", "token_ids", "text"}
    assert result["prompt_ids"] == golden["prompt_ids"]
    assert result["token_ids"] == golden["greedy_ids"][:8]


@pytest.mark.slow
def test_stop_at_eos_ends_on_the_eos_token(capsys: pytest.CaptureFixture[str]) -> None:
    golden = case("raw")
    eos_at = golden["greedy_ids"].index(2)  # this continuation ends its answer with <|im_end|>
    code, out, _ = run(
        capsys,
        "--prompt",
        golden["text"],
        "--max-tokens",
        "64",
        "--stop-at-eos",
        "--json",
        "--weight-dtype",
        "float32",
    )
    assert code == 0
    result = json.loads(out)
    assert result["token_ids"] == golden["greedy_ids"][: eos_at + 1]
    assert "<|im_end|>" not in result["text"] and result["text"].startswith(" Paris.")


def test_bad_arguments_exit_2_with_a_message(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "--prompt", "x", "--max-tokens", "0")
    assert code == 2 and "--max-tokens must be >= 1" in err
    code, _, err = run(capsys, "--prompt", "x", "--max-tokens", "2", "--model-path", str(tmp_path))
    assert code == 2 and "config.json" in err
