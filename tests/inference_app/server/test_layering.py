"""The server's seams, checked on the source: routes stay thin and never reach into each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVER = Path(__file__).resolve().parents[3] / "inference_app" / "server"
ROUTES = sorted(SERVER.glob("routes_*.py"))


def server_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) for every `from inference_app.server.<module> import <name>` in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("inference_app.server"):
            module = (node.module or "").removeprefix("inference_app.server").lstrip(".")
            found += [(module or alias.name, alias.name) for alias in node.names]
    return found


def test_there_are_route_modules() -> None:
    assert {p.stem for p in ROUTES} >= {"routes_jetstream", "routes_openai", "routes_ops"}


@pytest.mark.parametrize("path", ROUTES, ids=lambda p: p.stem)
def test_routes_import_no_other_routes_and_only_shared_or_their_own_serving_module(path: Path) -> None:
    own = "serving_" + path.stem.removeprefix("routes_")
    allowed = {"protocol", "errors", "state", "serving", own}
    modules = {module for module, _ in server_imports(path)}
    assert modules <= allowed, f"{path.name} imports {sorted(modules - allowed)}"


@pytest.mark.parametrize("path", sorted(SERVER.glob("*.py")), ids=lambda p: p.stem)
def test_no_module_imports_another_ones_private_names(path: Path) -> None:
    private = [f"{module}.{name}" for module, name in server_imports(path) if name.startswith("_")]
    assert private == []
