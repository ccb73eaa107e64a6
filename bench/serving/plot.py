"""PNG plots of a `compare.py` result file: throughput, TTFT and ITL against concurrency, one line
per server (files written before the guidellm runner, with a "throughput" key, are not read).

    .venv/bin/python bench/serving/plot.py bench/serving/results/cpu.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

COLORS = {"ours": "tab:blue", "llama-server": "tab:orange", "llama-cpp-python": "tab:green"}


def plot_results(path: Path) -> list[Path]:
    data = json.loads(path.read_text())
    rows = data.get("levels") or []
    servers = [s for s in COLORS if rows and s in rows[0]]
    if not servers:
        return []
    levels = [r["concurrency"] for r in rows]
    written = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for side in servers:
        ax.plot(levels, [r[side]["output_tok_s"] for r in rows], "o-", color=COLORS[side], label=side)
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("output tokens / s")
    ax.set_title(f"Throughput, SmolLM2-135M Q4_1 GGUF ({data['name']})")
    ax.grid(alpha=0.3)
    ax.legend()
    out = path.with_name(f"{path.stem}-throughput.png")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    written.append(out)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for side in servers:
        for ax, key in ((ax1, "ttft_ms"), (ax2, "itl_ms")):
            ax.plot(
                levels, [r[side][key]["p50"] for r in rows], "o-", color=COLORS[side], label=f"{side} p50"
            )
            ax.plot(
                levels,
                [r[side][key]["p99"] for r in rows],
                "x--",
                color=COLORS[side],
                alpha=0.6,
                label=f"{side} p99",
            )
    for ax, title in ((ax1, "Time to first token"), (ax2, "Inter-token latency")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel("ms")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    out = path.with_name(f"{path.stem}-latency.png")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    written.append(out)
    return written


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        for png in plot_results(Path(arg)):
            print(f"wrote {png}")
