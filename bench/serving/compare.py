"""Our server vs llama.cpp's `llama-server` (and llama-cpp-python's server) on the same GGUF.

Every server runs with its default flags (ours exactly as `make serve` starts it), except that
llama-server's `--parallel` is set to our slot count (read from our `/metrics`). The load
generator is guidellm (independent of this project, in its own venv under .work/, see
`llamacpp.sh setup`): streaming chat completions (`/v1/chat/completions`; `--api completions`
for `/v1/completions`), synthetic prompts of
`--prompt-tokens` tokens, exactly `--max-tokens` output tokens per request (guidellm sends
`ignore_eos`), temperature 0 (greedy), a closed loop of C concurrent streams with max(16, 2 x C)
requests per level. Output tok/s = output tokens of the successful requests / the level's
duration.

Servers are started once and measured level by level, alternating between them (ours, then
llama-server, then llama-cpp-python at each concurrency), never two at once, so a change in
background load hits all alike. Recorded per (server, level): output tok/s, TTFT p50/p99, ITL
p50/p99, TPOT p50, failures, and the server process's peak RSS so far (VmHWM), plus the load
average. Writes `bench/serving/results/<name>.json` and the plots next to it.

    bench/serving/llamacpp.sh setup                       # once (make bench does it)
    .venv/bin/python bench/serving/compare.py --name cpu-2core-llama-server
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / ".work"
RESULTS = ROOT / "bench" / "serving" / "results"
LLAMACPP = ROOT / "bench" / "serving" / "llamacpp.sh"
GUIDELLM = WORK / "guidellm" / "bin" / "guidellm"
TOKENIZER = WORK / "tokenizer"  # the GGUF's tokenizer as transformers files, for guidellm's prompts
SERVERS = ("ours", "llama-server", "llama-cpp-python")
API_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server subprocess in its own process group; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, cmd: list[str], port: int, ready_path: str, log_dir: Path) -> None:
        self.name, self.port, self.ready_path = name, port, ready_path
        self.url = f"http://127.0.0.1:{port}"
        self.log = (log_dir / f"{name}.log").open("w")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout_s: float = 3600) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log.name}")
            try:
                r = httpx.get(self.url + self.ready_path, timeout=5)
                if r.status_code == 200 and '"is_live":false' not in r.text:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(2)
        raise TimeoutError(f"{self.name} not ready after {timeout_s} s")

    def peak_rss_mib(self) -> float | None:
        """VmHWM of the server process (the `exec`ed binary for the llama.cpp scripts)."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        return round(int(m.group(1)) / 1024, 1) if m else None

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


def start(name: str, log_dir: Path, slots: int, ours_args: list[str]) -> Server:
    port = free_port()
    if name == "ours":  # `make serve` without its fixed host/port: the defaults under test
        return Server(
            name,
            [sys.executable, "-m", "inference_app", "serve", "--port", str(port), *ours_args],
            port,
            "/healthcheck",
            log_dir,
        )
    if name == "llama-server":
        return Server(
            name, ["bash", str(LLAMACPP), "serve-native", str(port), str(slots)], port, "/health", log_dir
        )
    return Server(name, ["bash", str(LLAMACPP), "serve", str(port)], port, "/v1/models", log_dir)


def our_slots(server: Server) -> int:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    m = re.search(r"^inference_max_slots (\S+)$", text, re.M)
    if not m or float(m.group(1)) < 1:
        raise RuntimeError("our /metrics has no inference_max_slots > 0")
    return int(float(m.group(1)))


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def git_commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()


def llama_cpp_commit() -> str | None:
    """The llama.cpp commit `llamacpp.sh setup` built (None before it ran)."""
    path = WORK / "llama.cpp-commit"
    return path.read_text().strip() if path.exists() else None


def export_tokenizer() -> None:
    """tokenizer.json + tokenizer_config.json of the embedded GGUF, which guidellm's synthetic
    prompts are sized with (no download: transformers reads the local directory)."""
    if (TOKENIZER / "tokenizer.json").exists():
        return
    from inference_app.model.catalog import embedded_model_path
    from inference_app.model.weights_gguf import GGUFCheckpoint, gguf_tokenizer

    tok = gguf_tokenizer(GGUFCheckpoint(str(embedded_model_path("smollm2-135m"))))
    TOKENIZER.mkdir(parents=True, exist_ok=True)
    tok.backend.save(str(TOKENIZER / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|im_end|>",
        "chat_template": tok.chat_template,
        "model_max_length": 8192,
    }
    (TOKENIZER / "tokenizer_config.json").write_text(json.dumps(config))


def guidellm(
    server: Server, concurrency: int, requests: int, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    """One level with guidellm; returns its per-request statistics, summarised."""
    scenario = {
        "spec": {
            "backend": {
                "kind": "openai_http",
                "target": server.url,
                "request_format": API_PATHS[args.api],
                "validate_backend": False,
                "extras": {"body": {"temperature": 0}},
            },
            "profile": {"kind": "concurrent", "streams": concurrency},
            "data": [
                {
                    "kind": "synthetic_text",
                    "prompt_tokens": args.prompt_tokens,
                    "output_tokens": args.max_tokens,
                }
            ],
            "tokenizer": {"kind": "huggingface_auto", "model": str(TOKENIZER)},
            "constraints": [{"kind": "max_requests", "count": requests}],
        },
        "benchmarks": [{"profile.streams": concurrency}],
    }
    path = tmp / f"{server.name}-{concurrency}.scenario.json"
    out = tmp / f"{server.name}-{concurrency}.guidellm.json"
    path.write_text(json.dumps(scenario))
    cmd = [str(GUIDELLM), "run", "-c", str(path), "--output", f"kind=json,path={out}", "--disable-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=7200)
    if proc.returncode != 0:
        raise RuntimeError(f"guidellm failed for {server.name} at {concurrency}:\n{proc.stderr[-3000:]}")
    return summarize(json.loads(out.read_text()))


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers the tables need from guidellm's JSON report (one benchmark)."""
    bench = report["benchmarks"][0]
    metrics = bench["metrics"]

    def stat(name: str, key: str) -> float | None:
        block = metrics.get(name, {}).get("successful") or {}
        value = block.get("percentiles", {}).get(key) if key.startswith("p") else block.get(key)
        return None if value is None else round(float(value), 2)

    totals = metrics.get("request_totals", {}) or {}
    out_tokens = (metrics.get("output_token_count", {}).get("successful") or {}).get("total_sum") or 0
    return {
        "output_tok_s": round(out_tokens / bench["duration"], 2) if bench.get("duration") else None,
        "output_tokens": out_tokens,
        "duration_s": round(float(bench.get("duration") or 0), 2),
        "requests_s": stat("requests_per_second", "mean"),
        "ttft_ms": {
            "p50": stat("time_to_first_token_ms", "p50"),
            "p99": stat("time_to_first_token_ms", "p99"),
        },
        "itl_ms": {
            "p50": stat("inter_token_latency_ms", "p50"),
            "p99": stat("inter_token_latency_ms", "p99"),
        },
        "tpot_ms": {"p50": stat("time_per_output_token_ms", "p50")},
        "completed": totals.get("successful"),
        "failed": totals.get("errored"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default="cpu")
    p.add_argument("--levels", default="1,4,16,32,64")
    p.add_argument("--servers", default=",".join(SERVERS), help=f"any of {', '.join(SERVERS)}")
    p.add_argument(
        "--api",
        choices=sorted(API_PATHS),
        default="chat",
        help="chat (the issue's setup; guidellm sends messages as content parts) or completions",
    )
    p.add_argument("--max-tokens", type=int, default=96, help="output tokens per request")
    p.add_argument("--prompt-tokens", type=int, default=128, help="tokens of each synthetic chat prompt")
    p.add_argument("--requests", type=int, default=0, help="requests per level (default max(16, 2 x level))")
    p.add_argument(
        "--ours-args",
        default="",
        help="extra flags for our server, e.g. '--weight-dtype float32' (default: none, make serve's)",
    )
    args = p.parse_args()
    if not GUIDELLM.exists():
        raise SystemExit("guidellm is missing: run bench/serving/llamacpp.sh setup (make bench does)")
    export_tokenizer()
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_dir = WORK / "bench-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    names = [s for s in args.servers.split(",") if s]
    out: dict[str, Any] = {
        "name": args.name,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "uptime_start": uptime(),
        "cpus": os.cpu_count(),
        "args": vars(args),
        "llama_cpp_commit": llama_cpp_commit(),
        "commit": git_commit(),
        "load_generator": "guidellm "
        + subprocess.run([str(GUIDELLM), "--version"], capture_output=True, text=True).stdout.strip(),
        "levels": [],
    }
    print(out["uptime_start"], flush=True)
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp_dir:
        servers: dict[str, Server] = {}
        slots = 0
        for name in [
            "ours",
            *[n for n in names if n != "ours"],
        ]:  # ours first: its slot count sets --parallel
            server = start(name, log_dir, slots, args.ours_args.split())
            stack.callback(server.close)
            server.wait_ready()
            if name == "ours":
                slots = our_slots(server)
                out["our_slots"] = slots
            if name in names:
                servers[name] = server
        for c in (int(x) for x in args.levels.split(",")):
            n = args.requests or max(16, 2 * c)
            row: dict[str, Any] = {"concurrency": c, "requests": n}
            for name, server in servers.items():
                result = guidellm(server, c, n, args, Path(tmp_dir))
                result["peak_rss_mib"] = server.peak_rss_mib()
                result["uptime"] = uptime()
                row[name] = result
                print(
                    f"  {name:16s} {c:>3} conc: {result['output_tok_s']} out tok/s  TTFT p50 "
                    f"{result['ttft_ms']['p50']} ms  ITL p50 {result['itl_ms']['p50']} ms  failed "
                    f"{result['failed']}  RSS {result['peak_rss_mib']} MiB  "
                    f"[{result['uptime'].split('load average:')[-1].strip()}]",
                    flush=True,
                )
            out["levels"].append(row)
            _save(out)
    out["uptime_end"] = uptime()
    path = _save(out)
    from plot import plot_results  # sibling module; matplotlib only here

    for png in plot_results(path):
        print(f"wrote {png}")


def _save(out: dict[str, Any]) -> Path:
    path = RESULTS / f"{out['name']}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    return path


if __name__ == "__main__":
    main()
