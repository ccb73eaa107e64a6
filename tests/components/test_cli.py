"""The offline commands (`render`, `preview`, `config_docs`) and the import boundary of components/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components import config_docs, manifests, preview, render
from components.config import SECTIONS

from .conftest import REPO_ROOT, STACKS, STACKS_DIR, load_stack


@pytest.mark.parametrize("stack", STACKS)
def test_render_prints_the_manifests(stack: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert render.main([str(STACKS_DIR / f"Pulumi.{stack}.yaml")]) == 0
    out = capsys.readouterr().out
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert docs == manifests.workload_objects(load_stack(stack))
    assert "lws/releases/download/v0.10.0/manifests.yaml" in out


def test_render_rejects_invalid_config_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (STACKS_DIR / "Pulumi.dev.yaml").read_text().replace("topology: 1x1", "topology: 3x3")
    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_text(text)
    assert render.main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert "invalid stack configuration" in err and "tpu.topology: '3x3' is not a v6e topology" in err
    assert render.main([str(tmp_path / "Pulumi.missing.yaml")]) == 2
    assert "no such stack file" in capsys.readouterr().err


def test_preview_prints_tree_outputs_and_manifests(capsys: pytest.CaptureFixture[str]) -> None:
    assert preview.main(["--stack", "llama2-70b-disagg"]) == 0
    out = capsys.readouterr().out
    assert "not a cloud diff" in out
    assert (
        "+ kubernetes:leaderworkerset.x-k8s.io/v1:LeaderWorkerSet inference-lws  [provider=gke-k8s; after="
        in out
    )
    assert "+ gcp:container/nodePool:NodePool tpu-pool-1-node-pool" in out
    assert "kubeconfig: '[secret]'" in out
    assert "kind: LeaderWorkerSet" in out


def test_config_reference_in_docs_is_up_to_date() -> None:
    doc = (REPO_ROOT / "docs" / "infra.md").read_text()
    table = config_docs.reference_table()
    assert table in doc, (
        "docs/infra.md is stale: run .venv/bin/python -m components.config_docs --write docs/infra.md"
    )
    # Every field of every section is documented.
    for section, model in SECTIONS.items():
        for name in model.model_fields:
            assert f"`tpu-pathways-inference:{section}.{name}" in table


def test_components_never_import_jax_or_inference_app() -> None:
    code = (
        "import sys, components.program, components.render, components.preview, components.config_docs;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'inference_app'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


COMPONENT_MODULES = (
    "gke_cluster",
    "existing_cluster",
    "tpu_slice_pool",
    "storage",
    "lws_controller",
    "inference_workload",
    "batch_job",
    "service_accounts",
)


@pytest.mark.parametrize("module", COMPONENT_MODULES)
def test_components_take_narrow_args_not_the_stack_config(module: str) -> None:
    """Each ComponentResource's args say what it consumes; only program.py maps the whole config."""
    import ast

    tree = ast.parse((REPO_ROOT / "components" / f"{module}.py").read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "StackConfig" not in names and "components.program" not in modules
