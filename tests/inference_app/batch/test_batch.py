"""The batch client against a model-free loopback server: retries, resume, crash safety, gs-like output."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

from inference_app.batch import cli as batch
from inference_app.batch.items import parse_item
from inference_app.batch.store import Journal
from inference_app.testing.fake_server import BackgroundServer, FakeState, create_app

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture()
def fake() -> Iterator[tuple[str, FakeState]]:
    app = create_app(token_delay_s=0.0)
    with BackgroundServer(app) as server:
        yield server.url, app.state.fake


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run_batch(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    batch.add_arguments(parser)
    return batch.main(parser.parse_args([*argv, "--no-progress"]))


def test_retries_transient_failures_and_records_permanent_ones(
    fake: tuple[str, FakeState], tmp_path: Path
) -> None:
    url, state = fake
    rows: list[dict[str, Any]] = [
        {"id": 1, "prompt": "plain", "max_tokens": 4},
        {"id": "r429", "prompt": "FAIL429x2 please", "max_tokens": 3},
        {"id": "r503", "prompt": "FAIL503x1 please"},
        {"id": "drop", "prompt": "DROPx1 please"},
        {"id": "bad", "prompt": "FAIL400 please"},
        {"id": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    ]
    write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert (
        run_batch(
            "--input",
            str(tmp_path / "in.jsonl"),
            "--output",
            str(out),
            "--endpoint",
            url,
            "--max-tokens",
            "5",
            "--concurrency",
            "3",
        )
        == 0
    )
    recs = {r["id"]: r for r in read_jsonl(out)}
    assert set(recs) == {1, "r429", "r503", "drop", "bad", "chat"}
    assert recs[1]["text"] == " w0 w1 w2 w3" and recs[1]["completion_tokens"] == 4
    assert recs[1]["finish_reason"] == "length" and recs[1]["error"] is None
    assert recs["r429"]["attempts"] == 3 and recs["r429"]["completion_tokens"] == 3
    assert recs["r503"]["attempts"] == 2 and recs["r503"]["completion_tokens"] == 5  # --max-tokens default
    assert recs["drop"]["attempts"] == 2 and recs["drop"]["error"] is None
    assert recs["chat"]["text"] == " w0 w1"
    # A permanent 4xx: recorded with the server's message, sent exactly once.
    assert recs["bad"]["error"] == {
        "status": 400,
        "message": "prompt rejected (FAIL400 marker)",
        "retryable": False,
    }
    assert state.attempts["FAIL400 please"] == 1


def test_rerun_skips_finished_ids_and_retries_exhausted_ones(
    fake: tuple[str, FakeState], tmp_path: Path
) -> None:
    url, state = fake
    rows = [{"id": i, "prompt": f"p{i}"} for i in range(5)] + [{"id": "flaky", "prompt": "FAIL503x3 x"}]
    write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    args = (
        "--input",
        str(tmp_path / "in.jsonl"),
        "--output",
        str(out),
        "--endpoint",
        url,
        "--max-tokens",
        "2",
    )
    assert run_batch(*args, "--max-attempts", "2") == 1  # one line still needs a retry -> nonzero
    first = read_jsonl(out)
    assert len(first) == 6
    assert next(r for r in first if r["id"] == "flaky")["error"]["retryable"] is True
    sent = state.requests
    assert run_batch(*args, "--max-attempts", "2") == 0  # attempts 3 (503) and 4 (ok)
    assert state.requests == sent + 2  # only the flaky line was sent again
    final = read_jsonl(out)
    assert [r["id"] for r in final[-1:]] == ["flaky"] and final[-1]["error"] is None
    assert run_batch(*args) == 0 and state.requests == sent + 2  # nothing left to do


def test_torn_last_line_is_dropped_and_redone(fake: tuple[str, FakeState], tmp_path: Path) -> None:
    url, _ = fake
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt": f"p{i}"} for i in range(4)])
    out = tmp_path / "out.jsonl"
    good = {"id": 0, "text": "done before", "error": None}
    out.write_text(json.dumps(good) + "\n" + '{"id": 1, "text": "half a li', encoding="utf-8")
    assert run_batch("--input", str(tmp_path / "in.jsonl"), "--output", str(out), "--endpoint", url) == 0
    recs = read_jsonl(out)  # every line parses
    assert sorted(r["id"] for r in recs) == [0, 1, 2, 3]
    assert recs[0] == good  # kept, not redone


def batch_process(inp: Path, out: Path, url: str, concurrency: int) -> list[str]:
    """The command line of `inference_app batch` run as its own process (signals reach it alone)."""
    return [
        sys.executable,
        "-m",
        "inference_app",
        "batch",
        "--input",
        str(inp),
        "--output",
        str(out),
        "--endpoint",
        url,
        "--concurrency",
        str(concurrency),
        "--no-progress",
    ]


def test_kill_9_mid_run_leaves_whole_lines_and_resume_completes(tmp_path: Path) -> None:
    n = 60
    write_jsonl(
        tmp_path / "in.jsonl", [{"id": f"q{i}", "prompt": f"prompt {i}", "max_tokens": 10} for i in range(n)]
    )
    out = tmp_path / "out.jsonl"
    app = create_app(token_delay_s=0.01)  # ~0.1 s per request, 4 at a time: ~1.5 s in total
    with BackgroundServer(app) as server:
        cmd = batch_process(tmp_path / "in.jsonl", out, server.url, concurrency=4)
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while (not out.exists() or out.read_text().count("\n") < 12) and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        partial = out.read_bytes()
        complete = partial[: partial.rfind(b"\n") + 1]
        done_before = [json.loads(line) for line in complete.splitlines()]  # all whole lines parse
        assert 12 <= len(done_before) < n
        resumed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
    recs = read_jsonl(out)
    ids = [r["id"] for r in recs]
    assert sorted(ids) == sorted(f"q{i}" for i in range(n))  # none lost, none duplicated
    assert all(r["error"] is None and r["completion_tokens"] == 10 for r in recs)
    assert f"{len(done_before)} already done" in resumed.stderr
    assert app.state.fake.requests <= n + 4  # at most the in-flight requests were sent twice


def test_remote_output_is_uploaded_and_resumed_from_a_fresh_journal(
    fake: tuple[str, FakeState], tmp_path: Path
) -> None:
    url, state = fake
    remote = "memory://batch-test/results.jsonl"  # an fsspec object store, like gs://
    fs = fsspec.filesystem("memory")
    if fs.exists(remote):
        fs.rm(remote)
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt": f"p{i}"} for i in range(6)])
    common = (
        "--input",
        str(tmp_path / "in.jsonl"),
        "--output",
        remote,
        "--endpoint",
        url,
        "--max-tokens",
        "2",
    )
    assert run_batch(*common, "--journal", str(tmp_path / "pod1.jsonl")) == 0
    uploaded = [json.loads(line) for line in fs.cat_file(remote).decode().splitlines()]
    assert sorted(r["id"] for r in uploaded) == list(range(6))
    # A new pod with an empty disk: the journal is rebuilt from the uploaded object, nothing is resent.
    sent = state.requests
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt": f"p{i}"} for i in range(8)])
    assert run_batch(*common, "--journal", str(tmp_path / "pod2.jsonl")) == 0
    assert state.requests == sent + 2
    assert sorted(json.loads(line)["id"] for line in fs.cat_file(remote).decode().splitlines()) == list(
        range(8)
    )


def test_summary_reports_counts(
    fake: tuple[str, FakeState], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = fake
    write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "prompt": "a"}, {"id": 2, "prompt": "FAIL400"}])
    assert (
        run_batch(
            "--input",
            str(tmp_path / "in.jsonl"),
            "--output",
            str(tmp_path / "o.jsonl"),
            "--endpoint",
            url,
            "--max-tokens",
            "3",
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "2 lines, 0 already done, 1 ok, 1 errors" in err and "3 tokens" in err


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"prompt": "x"}', "'id' is required"),
        ('{"id": true, "prompt": "x"}', "'id' is required"),
        ('{"id": 1}', "exactly one of 'prompt'"),
        ('{"id": 1, "prompt": "x", "messages": []}', "exactly one of 'prompt'"),
        ('{"id": 1, "prompt": ""}', "'prompt' must be a non-empty string"),
        ('{"id": 1, "messages": [{"role": "user"}]}', "'messages' must be"),
        ('{"id": 1, "prompt": "x", "max_tokens": 0}', "'max_tokens' must be an integer >= 1"),
        ('{"id": 1, "prompt": "x", "temperature": -1}', "'temperature' must be a number >= 0"),
        ('{"id": 1, "prompt": "x", "top_p": 0}', "'top_p' must be in (0, 1]"),
        ('{"id": 1, "prompt": "x", "stop": [1]}', "'stop' must be"),
        ('{"id": 1, "prompt": "x", "max_token": 5}', "unknown field(s) ['max_token']"),
    ],
)
def test_bad_input_lines_name_the_field(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"in\.jsonl line 7") as info:
        parse_item("in.jsonl line 7", line)
    assert message in str(info.value)


def test_cli_rejects_bad_input_before_sending_anything(
    fake: tuple[str, FakeState], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, state = fake
    (tmp_path / "in.jsonl").write_text('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n')
    assert (
        run_batch(
            "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.jsonl"), "--endpoint", url
        )
        == 2
    )
    assert "line 2: duplicate id 1 (first on line 1)" in capsys.readouterr().err
    assert state.requests == 0


def test_journal_appends_whole_lines(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.jsonl")
    for i in range(3):
        j.append({"id": i, "text": "é" * 5000})  # multi-page lines
    snap = j.snapshot()
    j.close()
    assert snap.endswith(b"\n") and [json.loads(x)["id"] for x in snap.splitlines()] == [0, 1, 2]


def test_local_mode_runs_the_orchestrator_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from inference_app.batch import local as batch_local
    from inference_app.engine.api import SamplingParams
    from inference_app.engine.settings import EngineSettings
    from tests.inference_app.fakes import ByteTokenizer, FakeEngine, expected_ids

    built: list[EngineSettings] = []

    def build(settings: EngineSettings) -> FakeEngine:
        built.append(settings)
        return FakeEngine(settings=settings)

    monkeypatch.setattr(batch_local, "build_engine", build)
    rows: list[dict[str, Any]] = [{"id": i, "prompt": f"local {i}", "max_tokens": 20} for i in range(6)]
    rows += [
        {"id": "long", "prompt": "x" * 100},
        {"id": "chat", "messages": [{"role": "user", "content": "hi"}]},
    ]
    write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert (
        run_batch(
            "--input",
            str(tmp_path / "in.jsonl"),
            "--output",
            str(out),
            "--local",
            "--concurrency",
            "4",
            "--max-tokens",
            "10",
            "--max-slots",
            "2",
            "--max-prefill-length",
            "64",
            "--max-target-length",
            "160",
            "--kv-dtype",
            "float32",
        )
        == 0
    )
    # The engine flags are serve's (engine/settings.py), so --local can size the engine and set dtypes.
    assert built == [
        EngineSettings(max_slots=2, max_prefill_length=64, max_target_length=160, kv_dtype="float32")
    ]
    recs = {r["id"]: r for r in read_jsonl(out)}
    tok = ByteTokenizer()
    for i in range(6):
        ids = expected_ids(tok.encode(f"local {i}"), 20, SamplingParams())
        assert recs[i]["text"] == tok.decode([t for t in ids if t < 256]), i
        assert recs[i]["completion_tokens"] == len(ids) and recs[i]["error"] is None
    # Over the prefill limit: the orchestrator's 400, recorded as a permanent error.
    assert recs["long"]["error"]["status"] == 400 and "64" in recs["long"]["error"]["message"]
    assert recs["long"]["error"]["retryable"] is False
    assert recs["chat"]["error"] is None and recs["chat"]["completion_tokens"] >= 1


def test_sigterm_stops_cleanly_and_a_rerun_finishes(tmp_path: Path) -> None:
    n = 40
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt": f"t {i}", "max_tokens": 10} for i in range(n)])
    out = tmp_path / "out.jsonl"
    with BackgroundServer(create_app(token_delay_s=0.01)) as server:
        cmd = batch_process(tmp_path / "in.jsonl", out, server.url, concurrency=2)
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while (not out.exists() or out.read_text().count("\n") < 4) and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 1 and "stopped by SIGTERM" in err
        first = read_jsonl(out)  # in-flight lines were finished and written whole
        assert 4 <= len(first) < n and all(r["error"] is None for r in first)
        assert subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=120).returncode == 0
    assert sorted(r["id"] for r in read_jsonl(out)) == list(range(n))
