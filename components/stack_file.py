"""Reading `stacks/Pulumi.<stack>.yaml` outside the Pulumi engine (render, preview, cost, tests).

Only file handling lives here: the `config:` mapping is handed to `config.parse_stack_config`,
which holds every rule. `pulumi up` never reads these files itself; the engine passes the same
values through its runtime config.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from components.config import ConfigError, StackConfig, parse_stack_config


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
