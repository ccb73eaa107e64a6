"""`python -m inference_app <command>`: generate, serve, batch, loadtest (alias bench).

The entry point of every flow: `generate` drives the engine directly, `serve` runs the HTTP server
(server -> orchestrator -> engine -> model), `batch` and `loadtest` are clients of a server (batch
can also run the orchestrator in-process). Each command lives in its own module exposing
`add_arguments(parser)` and `main(args) -> int`; modules are imported only when their command
runs, so `loadtest` never loads JAX.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("inference_app.generate", "Generate a continuation of one prompt (greedy by default)."),
    "serve": ("inference_app.server.cli", "Serve the model over HTTP (JetStream /generate + OpenAI API)."),
    "batch": (
        "inference_app.batch.cli",
        "Run a JSONL file of prompts, resumably, against a server or in-process.",
    ),
    "loadtest": (
        "inference_app.loadtest.cli",
        "Load-test a serving endpoint (ours or any OpenAI-compatible one).",
    ),
}
# Other names a command answers to: `bench` was the load generator's first name (scripts use it).
ALIASES: dict[str, str] = {"bench": "loadtest"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m inference_app", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = ALIASES.get(argv[0], argv[0]) if argv else None
    for name, (module_name, help_text) in COMMANDS.items():
        aliases = [alias for alias, target in ALIASES.items() if target == name]
        cmd = sub.add_parser(name, aliases=aliases, help=help_text, description=help_text)
        if name == wanted:
            importlib.import_module(module_name).add_arguments(cmd)
    args = parser.parse_args(argv)
    module = importlib.import_module(COMMANDS[ALIASES.get(args.command, args.command)][0])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
