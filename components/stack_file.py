"""Reading `stacks/Pulumi.<stack>.yaml` outside the Pulumi engine (render, preview, cost, tests, CI).

Only file handling lives here: the `config:` mapping is handed to `config.parse_stack_config`,
which holds every rule. `pulumi up` never reads these files itself; the Pulumi CLI passes the same
values through its runtime config.

As a command it fills in a checkout's placeholders before a deploy (the committed files never hold
a project id or a bucket): `python -m components.stack_file set FILE gcp:project=ID
tpu-pathways-inference:model.checkpoint=gs://...` sets keys (a dotted path below a section, as
`pulumi config set --path` does), and `check FILE` exits 1 listing what is still a placeholder.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from components.config import ConfigError, StackConfig, parse_stack_config
from components.config_rules import placeholder_problems


def stack_name_from_path(path: Path) -> str:
    m = re.fullmatch(r"Pulumi\.(.+)\.yaml", path.name)
    if not m:
        raise ConfigError(f"{path}: stack files are named Pulumi.<stack>.yaml")
    return m.group(1)


def read_stack_file(path: Path) -> dict[str, Any]:
    """The `config:` mapping of a stack file (no validation)."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such stack file")
    doc = yaml.safe_load(path.read_text()) or {}
    config = doc.get("config", {})
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: `config:` must be a mapping")
    return config


def load_stack_file(path: Path) -> StackConfig:
    return parse_stack_config(read_stack_file(path), stack=stack_name_from_path(path))


def load_for_command(path: Path) -> StackConfig | None:
    """The offline commands' loading: the config, or None after printing its problems to stderr."""
    try:
        return load_stack_file(path)
    except ConfigError as err:
        print(f"error: invalid stack configuration in {path}:\n{err}", file=sys.stderr)
        return None


def set_value(config: dict[str, Any], key: str, value: str) -> None:
    """Set `namespace:section.a.b` (or a top-level key such as `gcp:project`) to a string value."""
    top, _, path = key.partition(".")
    if not path:
        config[top] = value
        return
    node = config.setdefault(top, {})
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {part} is not a mapping in the stack file")
    node[leaf] = value


def write_values(path: Path, assignments: list[str]) -> None:
    doc = yaml.safe_load(path.read_text()) or {}
    config = doc.setdefault("config", {})
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not value:
            raise ConfigError(f"{assignment!r}: expected KEY=VALUE with a non-empty value")
        set_value(config, key, value)
    path.write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=1000))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.stack_file", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    set_parser = sub.add_parser("set", help="set KEY=VALUE pairs in a stack file")
    set_parser.add_argument("file", type=Path)
    set_parser.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    check_parser = sub.add_parser("check", help="fail while the stack file is invalid or holds placeholders")
    check_parser.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "set":
            write_values(args.file, args.assignments)
        problems = placeholder_problems(load_stack_file(args.file))
    except ConfigError as err:
        print(f"error: {args.file}:\n{err}", file=sys.stderr)
        return 2
    if args.command == "check" and problems:
        print(f"error: {args.file} still holds placeholders:\n" + "\n".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
