"""Automatic prefix caching A/B: time to first token on a shared-system-prompt workload.

Our server, started afresh for each run with the same flags except `--no-prefix-caching` on the
B side, serves `shared_prefix_prompts.jsonl` (64 chat turns under one ~590-token system prompt,
32 tokens each, `ignore_eos`) at each concurrency in `--levels`. Runs alternate A, B, B, A, ...
over `--rounds` rounds so that background load on this shared machine hits both sides alike.
Each run records TTFT mean/median/p99, output tok/s and the server's peak RSS (VmHWM). The server
runs with default engine flags, so the "on" side is what `make serve` gives.

Writes bench/serving/results/prefix-cache-ab.{json,md}.

    .venv/bin/python bench/serving/prefix_cache_ab.py [--levels 1,8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
PY = str(ROOT / ".venv" / "bin" / "python")
DATASET = ROOT / "bench" / "serving" / "shared_prefix_prompts.jsonl"
RESULTS = ROOT / "bench" / "serving" / "results"
PORT = 8137
# Default engine flags (slots, context and KV cache sized from memory, as `make serve` does); the
# queue holds every request of the workload.
SERVE_FLAGS = ["--max-queue", "256", "--log-level", "warning"]


def start_server(prefix_caching: bool, log: Path) -> subprocess.Popen[bytes]:
    flags = [*SERVE_FLAGS, *([] if prefix_caching else ["--no-prefix-caching"])]
    cmd = [PY, "-m", "inference_app", "serve", "--port", str(PORT), *flags]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{PORT}/healthcheck", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(2)
    proc.kill()
    raise RuntimeError(f"server not healthy after 30 min; see {log}")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_load(concurrency: int, out: Path) -> dict[str, Any]:
    cmd = [
        PY, "-m", "inference_app", "bench", "--endpoint", f"http://127.0.0.1:{PORT}", "--api", "openai",
        "--dataset", str(DATASET), "--num-prompts", "64", "--concurrency", str(concurrency),
        "--fixed-output", "ignore_eos", "--warmup", "2", "--output", str(out),
    ]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    summary: dict[str, Any] = json.loads(out.read_text())["summary"]
    return summary


def one_run(prefix_caching: bool, levels: list[int], tmp: Path) -> dict[str, Any]:
    label = "on" if prefix_caching else "off"
    proc = start_server(prefix_caching, tmp / f"server-{label}.log")
    try:
        per_level = {}
        for c in levels:
            s = run_load(c, tmp / f"load-{label}-{c}.json")
            per_level[c] = {
                "ttft_ms": s["ttft_ms"],
                "output_tok_s": s["output_tok_s"],
                "completed": s["completed"],
                "failed": s["failed"],
            }
            print(
                f"prefix caching {label:3s} c={c:3d}: TTFT median {s['ttft_ms']['median']:.0f} ms "
                f"p99 {s['ttft_ms']['p99']:.0f} ms, {s['output_tok_s']:.1f} out tok/s",
                flush=True,
            )
        return {
            "prefix_caching": prefix_caching,
            "levels": per_level,
            "peak_rss_mib": peak_rss_mib(proc.pid),
            "load_1min": os.getloadavg()[0],
        }
    finally:
        proc.terminate()
        proc.wait(timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,8", help="concurrency levels (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--name", default="prefix-cache-ab")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for on in (True, False) if r % 2 == 0 else (False, True):
                runs.append(one_run(on, levels, Path(tmp)))
    table = []
    for c in levels:
        row: dict[str, Any] = {"concurrency": c}
        for on in (True, False):
            side = [run["levels"][c] for run in runs if run["prefix_caching"] is on]
            key = "on" if on else "off"
            row[f"ttft_median_ms_{key}"] = statistics.median(s["ttft_ms"]["median"] for s in side)
            row[f"ttft_p99_ms_{key}"] = statistics.median(s["ttft_ms"]["p99"] for s in side)
            row[f"output_tok_s_{key}"] = statistics.median(s["output_tok_s"] for s in side)
        table.append(row)
    record = {"serve_flags": SERVE_FLAGS, "dataset": DATASET.name, "runs": runs, "table": table}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# Automatic prefix caching: TTFT on a shared system prompt",
        "",
        f"`bench/serving/prefix_cache_ab.py`: 64 chat turns under one ~590-token system prompt, 32 tokens "
        f"each; `serve {' '.join(SERVE_FLAGS)}`; {args.rounds} rounds alternating on/off, medians of the "
        f"runs; 1-minute load during the runs {min(r['load_1min'] for r in runs):.1f}-"
        f"{max(r['load_1min'] for r in runs):.1f} on {os.cpu_count()} cores (shared machine).",
        "",
        "| concurrent | TTFT median on | off | TTFT p99 on | off | out tok/s on | off |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in table:
        lines.append(
            f"| {row['concurrency']} | {row['ttft_median_ms_on']:.0f} ms "
            f"| {row['ttft_median_ms_off']:.0f} ms "
            f"| {row['ttft_p99_ms_on']:.0f} ms | {row['ttft_p99_ms_off']:.0f} ms "
            f"| {row['output_tok_s_on']:.1f} | {row['output_tok_s_off']:.1f} |"
        )
    rss = ", ".join(f"{r['peak_rss_mib']:.0f}" for r in runs)
    lines += ["", f"Peak RSS of the server per run (MiB): {rss}."]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
