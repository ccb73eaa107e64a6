"""Markdown tables of a `compare.py` result file, for docs/benchmarks.md.

    .venv/bin/python bench/serving/table.py bench/serving/results/cpu-2core-shared.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def tables(data: dict[str, Any]) -> str:
    out = [f"Run `{data['name']}` started {data['started']} on {data['cpus']} CPUs; "
           f"load at start: `{data['uptime_start'].split('load average:')[-1].strip()}`, "
           f"at end: `{data.get('uptime_end', '?').split('load average:')[-1].strip()}`.", ""]
    rows = data.get("throughput") or []
    args = data.get("args", {})
    if rows and "our_weights" in args:
        tokens = args.get("max_tokens") or "each prompt's own max_tokens (16-256, mean 119)"
        if "our_prefill_batch" in args:  # runs before chunked prefill
            flags = f"`--max-prefill-batch {args['our_prefill_batch']}`"
        else:
            flags = (
                f"`{args['our_flags']}`" if args.get("our_flags") else "(chunked prefill, the CPU default)"
            )
        out += [
            f"Throughput levels: ours with `--weight-dtype {args['our_weights']}` {flags}, llama.cpp with "
            f"the {args['peer_gguf'].upper()} file; tokens per request: {tokens}.",
            "",
        ]
    if rows:
        out += [
            "| concurrency | requests | ours out tok/s | llama.cpp out tok/s | ratio "
            "| ours TTFT p50 / p99 ms | llama.cpp TTFT p50 / p99 ms "
            "| ours TPOT p50 ms | llama.cpp TPOT p50 ms | failed (ours/llama.cpp) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            a, b = r["ours"]["summary"], r["llama.cpp"]["summary"]
            out.append(
                f"| {r['concurrency']} | {r['num_prompts']} | {a['output_tok_s']} | {b['output_tok_s']} | "
                f"{ratio(a['output_tok_s'], b['output_tok_s'])} | "
                f"{a['ttft_ms']['median']:.0f} / {a['ttft_ms']['p99']:.0f} | "
                f"{b['ttft_ms']['median']:.0f} / {b['ttft_ms']['p99']:.0f} | {a['tpot_ms']['median']:.1f} | "
                f"{b['tpot_ms']['median']:.1f} | {a['failed']} / {b['failed']} |"
            )
        out.append("")
    dec = data.get("decode") or {}
    if dec:
        out += ["| batch-1 decode | tok/s (median) | runs | vs peer |", "|---|---:|---|---:|"]
        pairs = [("ours-int8", "llama.cpp-Q8_0"), ("ours-default", "llama.cpp-Q4_1")]
        for ours, peer in pairs:
            for name, other in ((ours, peer), (peer, None)):
                if name in dec:
                    d = dec[name]
                    vs = (
                        ratio(d["decode_tok_s"], dec[other]["decode_tok_s"]) if other and other in dec else ""
                    )
                    out.append(f"| {name} | {d['decode_tok_s']} | {d['runs']} | {vs} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(tables(json.loads(Path(arg).read_text())))
