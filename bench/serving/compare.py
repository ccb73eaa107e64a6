"""Our server vs llama.cpp's server on the same GGUF, in one run, on this machine.

Starts both servers on loopback, then alternates between them level by level (so a change in
background load hits both alike) and never loads both at once:

1. batch-1 decode: one request at a time, a short prompt, exactly `--decode-tokens` new tokens;
   decode tok/s = 1 / TPOT (median of `--decode-repeats`). Ours with int8 weights vs llama.cpp
   with the Q8_0 file (made by `llamacpp.sh quantize`), and ours (default float32) vs Q4_1.
2. throughput at each concurrency in `--levels`: the bundled prompt set, every request generating
   exactly its own `max_tokens` from the set (16 to 256, mean 119; or `--max-tokens` for all)
   (ours: `ignore_eos`, llama.cpp: `min_tokens`). Each side runs its fastest configuration on
   this machine: ours with `--our-weights` (default bfloat16) and chunked prefill (the CPU
   default), llama.cpp with the Q8_0 file (faster here than the bundled Q4_1).

Writes `bench/serving/results/<name>.json` and the PNG plots next to it.

    .venv/bin/python bench/serving/compare.py --name cpu-2core   # ~20 min on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from inference_app.loadtest.client import FixedOutput  # noqa: E402
from inference_app.loadtest.runner import LoadTestSettings, run_load_test  # noqa: E402

RESULTS = ROOT / "bench" / "serving" / "results"
LLAMACPP = ROOT / "bench" / "serving" / "llamacpp.sh"
Q8_0 = ROOT / ".work" / "models" / "SmolLM2-135M-Instruct.Q8_0.gguf"
DECODE_PROMPT = "Write a long story about a lighthouse keeper and a storm."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server subprocess in its own process group; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, cmd: list[str], port: int, health: str, log_dir: Path) -> None:
        self.name, self.port, self.health = name, port, health
        self.url = f"http://127.0.0.1:{port}"
        self.log = (log_dir / f"{name}.log").open("w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float = 900) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + self.health, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"{self.name} not ready after {timeout_s} s")

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


def ours(name: str, port: int, log_dir: Path, args: argparse.Namespace, *extra: str) -> Server:
    cmd = [sys.executable, "-m", "inference_app", "serve", "--port", str(port), "--max-slots", str(args.max_slots),
           "--max-queue", "256", "--log-level", "warning", *extra]
    return Server(name, cmd, port, "/healthcheck", log_dir)


def llamacpp(name: str, port: int, log_dir: Path, gguf: Path | None = None) -> Server:
    cmd = ["bash", str(LLAMACPP), "serve", str(port), *([str(gguf)] if gguf else [])]
    return Server(name, cmd, port, "/v1/models", log_dir)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def bench(server: Server, fixed: FixedOutput, **kw: Any) -> dict[str, Any]:
    settings = LoadTestSettings(endpoint=server.url, api="openai", fixed_output=fixed, label=server.name, **kw)
    report = asyncio.run(run_load_test(settings))
    report["uptime"] = uptime()
    s = report["summary"]
    print(f"  {server.name:14s} {kw.get('concurrency')!s:>3} conc: {s['output_tok_s']:8.1f} out tok/s  "
          f"TTFT p50 {s['ttft_ms']['median']} ms  TPOT p50 {s['tpot_ms']['median']} ms  "
          f"failed {s['failed']}  [{report['uptime'].split('load average:')[-1].strip()}]", flush=True)
    return report


def decode_speed(server: Server, fixed: FixedOutput, tokens: int, repeats: int, tmp: Path) -> dict[str, Any]:
    data = tmp / "decode_prompt.jsonl"
    data.write_text(json.dumps({"id": "decode", "prompt": DECODE_PROMPT, "max_tokens": tokens}) + "\n")
    runs = [bench(server, fixed, num_prompts=1, concurrency=1, dataset=str(data), warmup=1 if i == 0 else 0)
            for i in range(repeats)]
    speeds = [r["summary"]["decode_tok_s_per_request"] for r in runs]
    return {"decode_tok_s": statistics.median(speeds), "runs": speeds, "uptime": runs[-1]["uptime"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default="cpu")
    p.add_argument("--levels", default="1,4,16,32,64")
    p.add_argument("--max-tokens", type=int, default=0,
                   help="tokens generated per request (default 0: each prompt's own max_tokens from the set)")
    p.add_argument("--our-weights", default="bfloat16", help="our --weight-dtype for the throughput levels")
    p.add_argument("--our-flags", default="",
                   help="more serve flags for our throughput levels, e.g. '--no-chunked-prefill --max-prefill-batch 8'")
    p.add_argument("--peer-gguf", choices=["q8_0", "q4_1"], default="q8_0",
                   help="llama.cpp's weights for the throughput levels")
    p.add_argument("--prompts", type=int, default=0, help="requests per level (default max(16, 2 x level))")
    p.add_argument("--max-slots", type=int, default=32, help="our server's decode slots")
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--decode-repeats", type=int, default=3)
    p.add_argument("--skip-decode", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    args = p.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_dir = ROOT / ".work" / "bench-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    levels = [int(x) for x in args.levels.split(",")]
    out: dict[str, Any] = {"name": args.name, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "uptime_start": uptime(), "cpus": os.cpu_count(), "args": vars(args),
                           "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                                    text=True).stdout.strip()}
    print(out["uptime_start"], flush=True)
    with ExitStack() as stack:
        if not args.skip_throughput:
            if args.peer_gguf == "q8_0" and not Q8_0.exists():
                subprocess.run(["bash", str(LLAMACPP), "quantize"], check=True)
            a = stack.enter_context(_closing(ours("ours", free_port(), log_dir, args, "--weight-dtype", args.our_weights,
                                                  *args.our_flags.split())))
            b = stack.enter_context(_closing(llamacpp("llama.cpp", free_port(), log_dir,
                                                      Q8_0 if args.peer_gguf == "q8_0" else None)))
            a.wait_ready()
            b.wait_ready()
            out["throughput"] = []
            for c in levels:
                n = args.prompts or max(16, 2 * c)
                kw = {"num_prompts": n, "concurrency": c, "max_tokens": args.max_tokens or None}
                row: dict[str, Any] = {"concurrency": c, "num_prompts": n,
                       "ours": bench(a, "ignore_eos", **kw), "llama.cpp": bench(b, "min_tokens", **kw)}
                for side in ("ours", "llama.cpp"):
                    row[side].pop("requests", None)
                out["throughput"].append(row)
                _save(out)
            a.close()
            b.close()
        if not args.skip_decode:
            if not Q8_0.exists():
                subprocess.run(["bash", str(LLAMACPP), "quantize"], check=True)
            out["decode"] = {}
            pairs = [("ours-int8", ["--weight-dtype", "int8"], "llama.cpp-Q8_0", Q8_0),
                     ("ours-default", [], "llama.cpp-Q4_1", None)]
            for our_name, extra, peer_name, gguf in pairs:
                a = stack.enter_context(_closing(ours(our_name, free_port(), log_dir, replace_slots(args, 1), *extra)))
                b = stack.enter_context(_closing(llamacpp(peer_name, free_port(), log_dir, gguf)))
                a.wait_ready()
                b.wait_ready()
                out["decode"][our_name] = decode_speed(a, "ignore_eos", args.decode_tokens, args.decode_repeats, log_dir)
                out["decode"][peer_name] = decode_speed(b, "min_tokens", args.decode_tokens, args.decode_repeats, log_dir)
                a.close()
                b.close()
                _save(out)
    out["uptime_end"] = uptime()
    path = _save(out)
    from plot import plot_results  # sibling module; matplotlib only here

    for png in plot_results(path):
        print(f"wrote {png}")


def replace_slots(args: argparse.Namespace, slots: int) -> argparse.Namespace:
    """Batch-1 decode runs our server with one slot: the same per-step work as llama.cpp's."""
    return argparse.Namespace(**{**vars(args), "max_slots": slots})


class _closing:
    def __init__(self, server: Server) -> None:
        self.server = server

    def __enter__(self) -> Server:
        return self.server

    def __exit__(self, *exc: object) -> None:
        self.server.close()


def _save(out: dict[str, Any]) -> Path:
    path = RESULTS / f"{out['name']}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    return path


if __name__ == "__main__":
    main()
