"""The load generator (`loadtest`, alias `bench`): timing maths against a server with a known token delay."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference_app.loadtest import cli, runner
from inference_app.loadtest.client import RequestResult
from inference_app.loadtest.dataset import load_prompts, sample_prompts
from inference_app.loadtest.metrics import summarize
from inference_app.testing.fake_server import BackgroundServer, FakeState, create_app

DELAY = 0.02  # seconds per streamed token from the fake server


@pytest.fixture()
def fake() -> Iterator[tuple[str, FakeState]]:
    app = create_app(token_delay_s=DELAY)
    with BackgroundServer(app) as server:
        yield server.url, app.state.fake


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.main(parser.parse_args(list(argv)))


@pytest.mark.parametrize("api", ["openai", "generate"])
def test_closed_loop_measures_known_token_timing(
    fake: tuple[str, FakeState], api: str, tmp_path: Path
) -> None:
    url, state = fake
    out = tmp_path / "r.json"
    assert (
        run_cli(
            "--endpoint",
            url,
            "--api",
            api,
            "--num-prompts",
            "9",
            "--concurrency",
            "3",
            "--max-tokens",
            "8",
            "--warmup",
            "0",
            "--output",
            str(out),
            "--save-requests",
        )
        == 0
    )
    report = json.loads(out.read_text())
    s = report["summary"]
    assert s["completed"] == 9 and s["failed"] == 0 and s["output_tokens"] == 72
    assert state.max_in_flight == 3  # the concurrency bound held
    # Each token takes DELAY on the server, so TPOT and ITL sit at DELAY (scheduling adds a little).
    assert DELAY * 0.9 <= s["tpot_ms"]["median"] / 1000 <= DELAY * 3
    assert DELAY * 0.9 <= s["itl_ms"]["median"] / 1000 <= DELAY * 3
    assert DELAY * 0.9 <= s["ttft_ms"]["median"] / 1000 < 10 * DELAY
    assert all(len(r["itl"]) == 7 for r in report["requests"])
    assert report["settings"]["model"] == ("fake-model" if api == "openai" else None)
    assert report["host"]["load_avg"] is not None


def test_open_loop_follows_the_request_rate(fake: tuple[str, FakeState]) -> None:
    url, _ = fake
    settings = runner.LoadTestSettings(
        endpoint=url, num_prompts=20, request_rate=40.0, max_tokens=2, warmup=0
    )
    report = asyncio.run(runner.run_load_test(settings))
    offsets = runner.arrival_times(20, 40.0, 0)
    # The run cannot finish before the last arrival plus two tokens.
    assert report["summary"]["duration_s"] >= offsets[-1] + 2 * DELAY * 0.9
    assert report["summary"]["completed"] == 20


def test_poisson_arrivals_have_the_requested_mean_gap() -> None:
    times = runner.arrival_times(4000, 5.0, seed=1)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert abs(statistics.mean(gaps) - 0.2) < 0.02
    assert abs(statistics.stdev(gaps) - 0.2) < 0.03  # exponential: stdev == mean
    assert runner.arrival_times(10, 5.0, seed=1) == times[:10]


def test_errors_are_counted_not_averaged(fake: tuple[str, FakeState], tmp_path: Path) -> None:
    url, _ = fake
    data = tmp_path / "d.jsonl"
    data.write_text(
        '{"id": "a", "prompt": "fine", "max_tokens": 3}\n{"id": "b", "prompt": "FAIL400", "max_tokens": 3}\n'
    )
    settings = runner.LoadTestSettings(
        endpoint=url, num_prompts=4, concurrency=2, dataset=str(data), warmup=0
    )
    s = asyncio.run(runner.run_load_test(settings))["summary"]
    assert s["completed"] == 2 and s["failed"] == 2 and s["errors"] == {"HTTP 400": 2}
    assert s["output_tokens"] == 6


def test_summary_percentiles() -> None:
    results = [
        RequestResult(ok=True, latency=1.0 + i / 100, ttft=0.1 * (i + 1), itl=[0.01] * 9, output_tokens=10)
        for i in range(100)
    ]
    s = summarize(results, duration_s=10.0, prompt_tokens=[5] * 100)
    assert s["ttft_ms"]["median"] == pytest.approx(5050.0)
    assert s["ttft_ms"]["p99"] == pytest.approx(9901.0)
    assert s["output_tok_s"] == 100.0 and s["input_tok_s"] == 50.0 and s["request_throughput"] == 10.0


def test_bundled_prompt_set_has_a_spread_of_lengths() -> None:
    prompts = load_prompts()
    assert len(prompts) == 200 and len({p.id for p in prompts}) == 200
    chars = sorted(len(p.prompt) for p in prompts)
    assert chars[0] < 40 and chars[-1] > 1000  # short chat turns up to long documents
    assert {p.max_tokens for p in prompts} >= {16, 64, 128, 256}
    picked = sample_prompts(prompts, 450, seed=3)
    assert len(picked) == 450 and picked == sample_prompts(prompts, 450, seed=3)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--num-prompts", "0", "--concurrency", "1"], "--num-prompts must be >= 1"),
        (["--num-prompts", "1", "--request-rate", "0"], "--request-rate must be > 0"),
        (["--num-prompts", "1", "--concurrency", "0"], "--concurrency must be >= 1"),
    ],
)
def test_bad_arguments_are_clear(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("--endpoint", "http://127.0.0.1:9", *argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["loadtest", "bench"])
def test_bench_is_an_alias_of_loadtest(fake: tuple[str, FakeState], command: str, tmp_path: Path) -> None:
    from inference_app.__main__ import main as entry_point

    url, state = fake
    out = tmp_path / "r.json"
    argv = [
        command,
        "--endpoint",
        url,
        "--num-prompts",
        "2",
        "--concurrency",
        "1",
        "--max-tokens",
        "2",
        "--warmup",
        "0",
        "--output",
        str(out),
    ]
    assert entry_point(argv) == 0
    assert json.loads(out.read_text())["summary"]["completed"] == 2 and state.requests == 2
