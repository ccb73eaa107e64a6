"""The mypy settings that keep `make typecheck` fast on a cold cache (pyproject.toml) still check
everything our code uses: every pulumi_gcp / pulumi_kubernetes package the stack touches is read,
and transformers / torch, which mypy no longer reads, stay out of the checked code."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("components", "inference_app", "policy")  # = the Makefile's typecheck paths
SDK_ALIASES = {"gcp": "pulumi_gcp", "k8s": "pulumi_kubernetes"}


def overrides(follow: str) -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["overrides"]
    return [m for o in config if o.get("follow_imports") == follow for m in o["module"]]


def read_normally(module: str) -> bool:
    """mypy's rule: the most specific matching pattern wins (exact, then the longest `x.*`)."""
    patterns = {**{p: "skip" for p in overrides("skip")}, **{p: "normal" for p in overrides("normal")}}
    if module in patterns:
        return patterns[module] == "normal"
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        found = patterns.get(".".join(parts[:n]) + ".*")
        if found:
            return found == "normal"
    return True


def sources() -> list[Path]:
    files = [p for d in CHECKED for p in (ROOT / d).rglob("*.py")]
    return [*files, ROOT / "__main__.py"]


def test_every_sdk_package_the_stack_uses_is_type_checked() -> None:
    used: set[str] = set()
    for path in sources():
        text = path.read_text()
        for alias, package in SDK_ALIASES.items():
            # gcp.compute.Network -> pulumi_gcp.compute; k8s.core.v1.Service -> pulumi_kubernetes.core.v1
            for chain in re.findall(rf"\b{alias}\.((?:[a-z_][a-z0-9_]*\.)*)[A-Za-z_]\w*", text):
                used.add(".".join([package, *chain.rstrip(".").split(".")]).rstrip("."))
    assert {"pulumi_gcp.compute", "pulumi_kubernetes.core.v1"} <= used  # the scan finds real uses
    missing = sorted(m for m in used if not read_normally(m))
    assert not missing, f"add these to the follow_imports = 'normal' override in pyproject.toml: {missing}"


def test_checked_code_imports_neither_transformers_nor_torch() -> None:
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )  # fmt: skip
            for name in names:
                assert name.split(".")[0] not in ("transformers", "torch"), (path, name)
