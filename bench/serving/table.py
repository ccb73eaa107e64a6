"""Markdown table of a `compare.py` result file, for docs/benchmarks.md: per concurrency level,
each server's output tok/s, our ratio to llama-server, TTFT p50/p99, ITL p50 and peak RSS.

    .venv/bin/python bench/serving/table.py bench/serving/results/cpu-2core-llama-server.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PEER = "llama-server"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def tables(data: dict[str, Any]) -> str:
    rows = data.get("levels") or []
    servers = [s for s in ("ours", PEER, "llama-cpp-python") if rows and s in rows[0]]
    args = data.get("args", {})
    out = [
        f"Run `{data['name']}` started {data['started']} on {data['cpus']} CPUs "
        f"(commit {data['commit'][:8]}, "
        f"llama.cpp {data.get('llama_cpp_commit')}, {data.get('load_generator')}); our slots "
        f"{data.get('our_slots')} = llama-server `--parallel`; {args.get('api')} requests, "
        f"{args.get('prompt_tokens')}-token prompts, {args.get('max_tokens')} output tokens, greedy; "
        f"load at start `{data['uptime_start'].split('load average:')[-1].strip()}`, at end "
        f"`{data.get('uptime_end', '?').split('load average:')[-1].strip()}`.",
        "",
    ]
    head = ["concurrency"] + [f"{s} out tok/s" for s in servers]
    if "ours" in servers and PEER in servers:
        head.append(f"ours / {PEER}")
    head += [f"{s} TTFT p50 / p99 ms" for s in servers] + [f"{s} ITL p50 ms" for s in servers]
    head += [f"{s} peak RSS MiB" for s in servers] + ["failed"]
    out += ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in rows:
        cells = [str(r["concurrency"])] + [str(r[s]["output_tok_s"]) for s in servers]
        if "ours" in servers and PEER in servers:
            cells.append(ratio(r["ours"]["output_tok_s"], r[PEER]["output_tok_s"]))
        cells += [f"{r[s]['ttft_ms']['p50']:.0f} / {r[s]['ttft_ms']['p99']:.0f}" for s in servers]
        cells += [f"{r[s]['itl_ms']['p50']:.1f}" for s in servers]
        cells += [str(r[s]["peak_rss_mib"]) for s in servers]
        cells.append(" / ".join(str(r[s]["failed"]) for s in servers))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(tables(json.loads(Path(arg).read_text())))
