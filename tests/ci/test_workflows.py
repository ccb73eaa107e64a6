"""Offline lint of .github/workflows: GitHub's workflow schema, zizmor's security audits, and the
project's own rules (every stack previewed, WIF only, minimal permissions, pinned actions)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
BIN = Path(sys.executable).parent
FILES = sorted(WORKFLOWS.glob("*.yml"))


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the bare key `on` as the boolean True.
    if True in data:
        data["on"] = data.pop(True)
    return data


def steps_using(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in job.get("steps", []) if str(s.get("uses", "")).startswith(action + "@")]


def test_the_three_workflows_exist() -> None:
    assert [f.name for f in FILES] == ["checks.yml", "deploy.yml", "pull-request.yml"]


# --- generic linters ------------------------------------------------------------------------------


def test_workflows_match_githubs_workflow_schema() -> None:
    """check-jsonschema ships SchemaStore's github-workflow schema, so this needs no network."""
    result = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *map(str, FILES)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    stepz: []\n")
    result = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0


def test_zizmor_finds_nothing_offline() -> None:
    """Template injection, unpinned uses, credential persistence, excessive permissions, ..."""
    result = subprocess.run(
        [str(BIN / "zizmor"), "--offline", "--persona=pedantic", "--format", "json", str(WORKFLOWS)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
    )
    findings = json.loads(result.stdout)
    assert findings == [], json.dumps(findings, indent=1)[:4000]


# --- every stack is previewed and deployed --------------------------------------------------------


def _list_script() -> str:
    (step,) = [s for s in load("checks.yml")["jobs"]["stacks"]["steps"] if s.get("id") == "list"]
    return str(step["run"])


def _run_list_script(cwd: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-e", "-c", _list_script()],
        cwd=cwd,
        env={**os.environ, "GITHUB_OUTPUT": str(out)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_listing_step_outputs_every_stack_file(tmp_path: Path) -> None:
    out = tmp_path / "github_output"
    result = _run_list_script(ROOT, out)
    assert result.returncode == 0, result.stderr
    key, value = out.read_text().strip().split("=", 1)
    expected = sorted(
        p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in (ROOT / "stacks").glob("Pulumi.*.yaml")
    )
    assert key == "stacks"
    assert json.loads(value) == expected
    assert expected, "stacks/ holds no stack file"


def test_listing_step_fails_clearly_without_stacks(tmp_path: Path) -> None:
    (tmp_path / "stacks").mkdir()
    result = _run_list_script(tmp_path, tmp_path / "out")
    assert result.returncode != 0
    assert "no stacks/Pulumi.<stack>.yaml found" in result.stderr


def test_stack_list_flows_from_the_step_to_both_matrices() -> None:
    checks = load("checks.yml")
    assert checks["jobs"]["stacks"]["outputs"]["stacks"] == "${{ steps.list.outputs.stacks }}"
    assert checks["on"]["workflow_call"]["outputs"]["stacks"]["value"] == "${{ jobs.stacks.outputs.stacks }}"
    for name, job in (("pull-request.yml", "preview"), ("deploy.yml", "up")):
        wf = load(name)
        assert wf["jobs"]["checks"]["uses"] == "./.github/workflows/checks.yml"
        assert wf["jobs"][job]["needs"] == "checks"  # after the project's tests
        assert (
            wf["jobs"][job]["strategy"]["matrix"]["stack"] == "${{ fromJSON(needs.checks.outputs.stacks) }}"
        )
        assert wf["jobs"][job]["strategy"]["fail-fast"] is False


def test_checks_run_the_same_gate_as_ci() -> None:
    runs = [s.get("run") for s in load("checks.yml")["jobs"]["test"]["steps"]]
    assert "make test" in runs
    assert "make test" in (ROOT / ".ci" / "run").read_text()


# --- preview on PRs, up on main -----------------------------------------------------------------


def _pulumi_step(name: str, job: str) -> dict[str, Any]:
    (step,) = steps_using(load(name)["jobs"][job], "pulumi/actions")
    return step["with"]


def test_pr_preview_posts_a_diff_with_the_policy_pack() -> None:
    wf = load("pull-request.yml")
    assert wf["on"] == {"pull_request": {"branches": ["main"]}}
    step = _pulumi_step("pull-request.yml", "preview")
    assert step["command"] == "preview"
    assert step["stack-name"] == "${{ matrix.stack }}"
    assert step["upsert"] is True  # a PR that adds a stack file previews it too
    assert step["diff"] is True and step["comment-on-pr"] is True
    assert step["policyPacks"] == "policy"
    assert (ROOT / step["policyPacks"] / "PulumiPolicy.yaml").is_file()


def test_main_deploys_each_stack_behind_its_environment() -> None:
    wf = load("deploy.yml")
    assert wf["on"]["push"] == {"branches": ["main"]}
    assert "pull_request" not in wf["on"] and "pull_request_target" not in wf["on"]
    job = wf["jobs"]["up"]
    assert job["environment"] == "${{ matrix.stack }}"
    step = _pulumi_step("deploy.yml", "up")
    assert step["command"] == "up" and step["stack-name"] == "${{ matrix.stack }}" and step["upsert"] is True
    assert step["policyPacks"] == "policy"
    assert wf["concurrency"]["cancel-in-progress"] is False  # never kill an `up` halfway


def test_pulumi_program_venv_is_the_one_the_jobs_build() -> None:
    program = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    venv = program["runtime"]["options"]["virtualenv"]
    pack = yaml.safe_load((ROOT / "policy" / "PulumiPolicy.yaml").read_text())
    assert (ROOT / "policy" / pack["runtime"]["options"]["virtualenv"]).resolve() == (ROOT / venv).resolve()
    for name, job in (("pull-request.yml", "preview"), ("deploy.yml", "up")):
        runs = "\n".join(str(s.get("run", "")) for s in load(name)["jobs"][job]["steps"])
        assert f"python -m venv {venv}" in runs and f"{venv}/bin/pip install" in runs


# --- credentials: Workload Identity Federation only ---------------------------------------------


@pytest.mark.parametrize(
    "name, job, account_var",
    [
        ("pull-request.yml", "preview", "GCP_PREVIEW_SERVICE_ACCOUNT"),
        ("deploy.yml", "up", "GCP_DEPLOY_SERVICE_ACCOUNT"),
    ],
)
def test_gcp_auth_is_workload_identity_federation(name: str, job: str, account_var: str) -> None:
    (auth,) = steps_using(load(name)["jobs"][job], "google-github-actions/auth")
    assert set(auth["with"]) == {"workload_identity_provider", "service_account", "project_id"}
    assert auth["with"]["workload_identity_provider"] == "${{ vars.GCP_WORKLOAD_IDENTITY_PROVIDER }}"
    assert auth["with"]["service_account"] == "${{ vars." + account_var + " }}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_keys_or_inline_secrets(path: Path) -> None:
    text = path.read_text()
    assert "credentials_json" not in text
    for pattern in (
        r"-----BEGIN [A-Z ]*PRIVATE KEY",
        r'"private_key"',
        r'"type":\s*"service_account"',
        r"AIza[0-9A-Za-z_-]{35}",
    ):
        assert not re.search(pattern, text), pattern
    # Only these secrets exist: a Pulumi Cloud token or a passphrase for stack secrets; nothing GCP.
    assert set(re.findall(r"secrets\.([A-Za-z0-9_]+)", text)) <= {
        "PULUMI_ACCESS_TOKEN",
        "PULUMI_CONFIG_PASSPHRASE",
    }


# --- permissions and pinning ----------------------------------------------------------------------

ALLOWED_WRITE = {"id-token": "google-github-actions/auth", "pull-requests": "pulumi/actions"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_permissions_are_minimal(path: Path) -> None:
    wf = load(path.name)
    assert wf["permissions"] in ({}, {"contents": "read"}), (
        "workflow default must grant nothing beyond reading"
    )
    for job_name, job in wf["jobs"].items():
        assert "permissions" in job, f"{job_name}: declare permissions explicitly"
        perms = job["permissions"]
        assert isinstance(perms, dict), f"{job_name}: no read-all/write-all shorthands"
        for scope, level in perms.items():
            if level == "write":
                assert scope in ALLOWED_WRITE, f"{job_name}: {scope}: write is not needed"
                assert steps_using(job, ALLOWED_WRITE[scope]), (
                    f"{job_name}: {scope}: write without {ALLOWED_WRITE[scope]}"
                )
            else:
                assert level in ("read", "none"), f"{job_name}: {scope}: {level}"
        if perms.get("pull-requests") == "write":
            assert all(s["with"].get("comment-on-pr") is True for s in steps_using(job, "pulumi/actions"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_actions_are_pinned_to_full_commit_shas(path: Path) -> None:
    uses = re.findall(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$", path.read_text(), flags=re.M)
    assert uses
    for ref, rest in uses:
        if ref.startswith("./"):
            continue
        owner_repo, _, version = ref.partition("@")
        assert owner_repo.split("/")[0] in {"actions", "google-github-actions", "pulumi"}, ref
        assert re.fullmatch(r"[0-9a-f]{40}", version), f"{ref}: pin a commit SHA, not a tag"
        assert re.search(r"#\s*v\d+\.\d+\.\d+", rest), f"{ref}: add the '# vX.Y.Z' the SHA stands for"


def test_same_action_same_pin_everywhere() -> None:
    pins: dict[str, set[str]] = {}
    for path in FILES:
        for ref in re.findall(r"uses:\s*([\w.-]+/[\w.-]+)@(\S+)", path.read_text()):
            pins.setdefault(ref[0], set()).add(ref[1])
    assert pins and all(len(v) == 1 for v in pins.values()), pins


def test_pulumi_cli_version_pinned_and_shared() -> None:
    versions = {load(n)["env"]["PULUMI_VERSION"] for n in ("pull-request.yml", "deploy.yml")}
    (version,) = versions
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)


# --- the provider versions the tests used; no placeholder reaches a deploy --------------------


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_installs_use_the_tested_versions(path: Path) -> None:
    """An unconstrained `pip install` resolves the newest provider SDKs, not the ones tested here."""
    runs = [str(s.get("run", "")) for job in load(path.name)["jobs"].values() for s in job.get("steps", [])]
    installs = [line for run in runs for line in run.splitlines() if "pip install" in line]
    for line in installs:
        assert "-c constraints.txt" in line, line


def _step(name: str, job: str, step_name: str) -> dict[str, Any]:
    (step,) = [s for s in load(name)["jobs"][job]["steps"] if s.get("name") == step_name]
    return step


def _run_step(step: dict[str, Any], workdir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a workflow step's script in a scratch copy of the checkout (stacks/ and the virtualenv)."""
    (workdir / ".venv").symlink_to(Path(sys.executable).parent.parent)
    return subprocess.run(
        ["bash", "-e", "-c", str(step["run"])],
        cwd=workdir,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_deploy_sets_every_required_value(tmp_path: Path) -> None:
    """After the deploy job's step, no shipped stack file holds a placeholder."""
    import shutil

    from components.config_rules import placeholder_problems
    from components.stack_file import load_stack_file

    step = _step("deploy.yml", "up", "set the stack's project and checkpoint")
    env = {"GCP_PROJECT_ID": "acme-inference-prod", "MODEL_CHECKPOINT": "gs://acme-models/llama/int8"}
    assert set(env) <= set(step["env"])
    for stack_file in sorted((ROOT / "stacks").glob("Pulumi.*.yaml")):
        workdir = tmp_path / stack_file.stem
        (workdir / "stacks").mkdir(parents=True)
        shutil.copy(stack_file, workdir / "stacks")
        stack = stack_file.name.removeprefix("Pulumi.").removesuffix(".yaml")
        result = _run_step(step, workdir, {**env, "STACK": stack})
        assert result.returncode == 0, result.stderr
        c = load_stack_file(workdir / "stacks" / stack_file.name)
        assert placeholder_problems(c) == [] and c.project == "acme-inference-prod"


def test_deploy_stops_before_pulumi_while_a_placeholder_is_left(tmp_path: Path) -> None:
    import shutil

    step = _step("deploy.yml", "up", "set the stack's project and checkpoint")
    (tmp_path / "stacks").mkdir()
    shutil.copy(ROOT / "stacks" / "Pulumi.dev.yaml", tmp_path / "stacks")
    env = {
        "STACK": "dev",
        "GCP_PROJECT_ID": "acme-inference-prod",
        "MODEL_CHECKPOINT": "gs://your-checkpoint-bucket/x",
    }
    result = _run_step(step, tmp_path, env)
    assert result.returncode == 1
    assert "model.checkpoint" in result.stderr and "placeholder" in result.stderr
    steps = [s.get("name") or s.get("uses") for s in load("deploy.yml")["jobs"]["up"]["steps"]]
    assert steps.index("set the stack's project and checkpoint") < next(
        i for i, s in enumerate(steps) if str(s).startswith("pulumi/actions")
    )
