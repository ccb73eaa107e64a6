"""`python -m inference_app <command>`: generate, serve, batch, bench.

Each command lives in its own module exposing `add_arguments(parser)` and `main(args) -> int`;
modules are imported only when their command runs, so `bench` never loads JAX.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("inference_app.generate", "Generate a continuation of one prompt (greedy by default)."),
    "serve": ("inference_app.server.cli", "Serve the model over HTTP (JetStream /generate + OpenAI API)."),
    "batch": ("inference_app.batch.cli", "Run a JSONL file of prompts, resumably, against a server or in-process."),
    "bench": ("inference_app.bench", "Benchmark a serving endpoint (ours or any OpenAI-compatible one)."),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m inference_app", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module_name, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            importlib.import_module(module_name).add_arguments(cmd)
    args = parser.parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
