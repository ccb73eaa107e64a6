"""The serving app's runtime dependencies (pyproject.toml) are exactly what `inference_app` imports.

`make serve` and the image install only these, so a missing one breaks serving and an unused one
(PyYAML, which only the Pulumi program reads) bloats it.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Distribution name -> import name, where they differ.
IMPORT_NAMES = {"pyyaml": "yaml", "prometheus-client": "prometheus_client", "orbax-checkpoint": "orbax"}
# Installed for a reason other than an import: fsspec loads its gs:// backend by URL scheme.
NOT_IMPORTED = {"gcsfs"}
# Imported directly but part of a declared dependency's own API (FastAPI documents importing
# Starlette's types; jaxlib is the half of JAX that holds the compiler and its headers).
PROVIDED_BY = {"starlette": "fastapi", "jaxlib": "jax"}


def dist_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def third_party_imports() -> dict[str, set[str]]:
    """Top-level third-party modules imported by the serving app (test doubles excluded) -> files."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "inference_app").rglob("*.py"):
        if "testing" in path.relative_to(ROOT / "inference_app").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "inference_app":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_runtime_dependency_is_imported() -> None:
    imported = set(third_party_imports())
    runtime = {dist_name(r) for r in PROJECT["dependencies"]}
    unused = {d for d in runtime - NOT_IMPORTED if IMPORT_NAMES.get(d, d.replace("-", "_")) not in imported}
    assert unused == set(), f"runtime dependencies nothing in inference_app imports: {sorted(unused)}"


def test_every_import_is_a_declared_dependency() -> None:
    declared = {dist_name(r) for r in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["tpu"]}
    import_names = {IMPORT_NAMES.get(d, d.replace("-", "_")) for d in declared}
    undeclared = {
        m: sorted(files)
        for m, files in third_party_imports().items()
        if m not in import_names and PROVIDED_BY.get(m) not in declared
    }
    assert undeclared == {}, f"imported but not a runtime (or tpu) dependency: {undeclared}"
