"""Print uv's flags for the package sources and constraints pip is configured with on this machine.

The Makefile installs with `uv pip install` (a fraction of pip's time and CPU for the dev set),
but uv does not read pip's configuration files or PIP_* variables; a machine whose pip uses local
wheel directories or mirror indexes (pip.conf, PIP_FIND_LINKS) must give uv the same sources, or
uv would take other builds (PyPI's CUDA torch instead of a local CPU wheel). Reads
`pip config list` (every file and variable pip reads, in pip's own order) and prints nothing when
pip has no such settings.

Run: .venv/bin/python scripts/pip_sources.py   ->   --find-links /opt/wheels --extra-index-url ...
"""

from __future__ import annotations

import ast
import subprocess
import sys

# pip option -> uv option (uv pip install takes each of these, repeatable).
FLAGS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
}


def uv_flags(pip_config_list: str) -> list[str]:
    """`key='value'` lines (`global.find-links='/opt/wheels'`, `:env:.find-links=...`) -> flags.
    A value may hold several whitespace-separated entries; an entry seen twice is given once."""
    flags: list[str] = []
    seen: set[tuple[str, str]] = set()
    for line in pip_config_list.splitlines():
        key, sep, raw = line.partition("=")
        option = key.rsplit(".", 1)[-1]
        if not sep or option not in FLAGS:
            continue
        for entry in str(ast.literal_eval(raw)).split():
            if (option, entry) not in seen:
                seen.add((option, entry))
                flags += [FLAGS[option], entry]
    if any(flag in ("--extra-index-url", "--find-links") for flag in flags[::2]):
        # pip takes the best version across all its sources; uv's default takes the first source
        # that has the package at all.
        flags += ["--index-strategy", "unsafe-best-match"]
    return flags


def main() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    print(" ".join(uv_flags(listed)))


if __name__ == "__main__":
    main()
