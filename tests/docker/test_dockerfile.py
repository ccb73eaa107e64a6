"""inference_app/Dockerfile properties, asserted by reading it (no Docker engine here).

Multi-stage, pinned base images, an unprivileged user in the final stage, no build tools or
package installs in it, the serving port, and an entry point that is our `serve` command with
flags the real CLI accepts, the same flags the stack's manifest passes.
"""

from __future__ import annotations

import argparse
import ast
import re
import tomllib
from pathlib import Path

import pytest

from components import catalog, manifests
from components.config import StackConfig, parse_stack_config
from components.stack_file import read_stack_file
from inference_app.batch import cli as batch_cli
from inference_app.server import cli as serve_cli
from policy.checks import image_reference_problem
from tests.components.conftest import app_model
from tests.docker.dockerfile import Stage, parse

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "inference_app" / "Dockerfile"
BUILD_TOOLS = re.compile(
    r"\b(build-essential|gcc|g\+\+|clang|make|cmake|cargo|rustc|python3?-dev|libc6-dev)\b"
)


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE)


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_reader_joins_continuations_and_splits_stages(tmp_path: Path) -> None:
    f = tmp_path / "Dockerfile"
    f.write_text(
        "# syntax=docker/dockerfile:1\nARG X=1\nFROM a:1 AS one\nRUN echo \\\n  hi\n\n"
        "FROM --platform=linux/amd64 b:2\nUSER 1\n"
    )
    one, two = parse(f)
    assert (one.image, one.name, two.image, two.name) == ("a:1", "one", "b:2", None)
    assert one.all("RUN")[0].value == "echo hi"
    assert two.last("USER") is not None and two.last("USER").value == "1"  # type: ignore[union-attr]


def test_multi_stage_build_copies_only_the_virtualenv(stages: list[Stage], final: Stage) -> None:
    assert len(stages) >= 2
    build_names = {s.name for s in stages[:-1]}
    copies = final.all("COPY")
    assert copies, "the runtime stage must copy the built virtualenv"
    for copy in copies:
        source_stage = re.search(r"--from=(\S+)", copy.value)
        assert source_stage and source_stage.group(1) in build_names, (
            f"runtime stage copies from the context: {copy.value}"
        )


def test_base_images_are_pinned(stages: list[Stage]) -> None:
    names = {s.name for s in stages}
    for stage in stages:
        if stage.image in names:
            continue  # FROM an earlier stage
        assert image_reference_problem(stage.image) is None, stage.image
        assert "$" not in stage.image, "pin the tag literally, not through a build ARG"


def test_base_python_satisfies_requires_python(stages: list[Stage]) -> None:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(x) for x in requires.removeprefix(">=").split("."))
    for stage in stages:
        version = re.match(r"python:(\d+)\.(\d+)", stage.image)
        assert version and (int(version.group(1)), int(version.group(2))) >= minimum, stage.image


def test_final_stage_runs_as_an_unprivileged_user(final: Stage) -> None:
    user = final.last("USER")
    assert user is not None, "the runtime stage needs a USER"
    uid = user.value.split(":")[0]
    assert uid not in ("root", "0")
    if uid.isdigit():
        assert int(uid) >= 1000
    # Nothing runs after switching back to root.
    after = final.instructions[final.instructions.index(user) + 1 :]
    assert all(i.keyword != "USER" for i in after)


def test_no_build_tools_or_installs_in_the_final_stage(stages: list[Stage], final: Stage) -> None:
    for run in final.all("RUN"):
        assert not BUILD_TOOLS.search(run.value), run.value
        assert "pip install" not in run.value and "apt-get install" not in run.value, run.value
    # The detector itself works: it recognises a compiler install.
    assert BUILD_TOOLS.search("apt-get install -y --no-install-recommends build-essential gcc")


def test_project_installed_with_the_tpu_extras(stages: list[Stage]) -> None:
    installs = [r.value for s in stages[:-1] for r in s.all("RUN") if "pip install" in r.value]
    assert any('".[tpu]"' in v or "'.[tpu]'" in v for v in installs), installs
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["tpu"]
    assert {re.split(r"[<>=\[]", e)[0] for e in extras} == {"jax", "pathwaysutils"}
    assert any(e.startswith("jax[tpu]") for e in extras)


def test_virtualenv_is_on_path_in_the_final_stage(final: Stage) -> None:
    env = " ".join(e.value for e in final.all("ENV"))
    assert re.search(r"PATH=/opt/venv/bin:\$PATH", env), "the manifest's `python` must be the venv's"


def test_exposes_the_service_port(final: Stage) -> None:
    exposed = [int(p.split("/")[0]) for e in final.all("EXPOSE") for p in e.value.split()]
    assert exposed == [catalog.HTTP_PORT]


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inference_app serve", exit_on_error=False)
    serve_cli.add_arguments(parser)
    return parser


def test_entrypoint_runs_our_serve_command(final: Stage) -> None:
    entrypoint, cmd = final.last("ENTRYPOINT"), final.last("CMD")
    assert entrypoint is not None and cmd is not None
    argv = entrypoint.exec_form() + cmd.exec_form()
    assert argv[:4] == ["python", "-m", "inference_app", "serve"]
    args = _serve_parser().parse_args(argv[4:])
    assert args.port == catalog.HTTP_PORT
    assert args.host == "0.0.0.0"  # reachable from the pod network, not only loopback


def test_the_stacks_container_command_is_accepted_by_the_images_cli() -> None:
    """The manifest replaces the image's command; its flags must exist in the serve CLI."""
    serving = read_stack_file(ROOT / "stacks" / "Pulumi.dev.yaml")["tpu-pathways-inference:serving"]
    serving = {k: v for k, v in serving.items() if k != "maxtext_extra_args"}
    command = manifests.inference_app_command(
        _inference_app_stack(serving={**serving, "engine": "inference-app"})
    )
    assert command[:4] == ["python", "-m", "inference_app", "serve"]
    args = _serve_parser().parse_args(command[4:])
    assert args.port == catalog.HTTP_PORT and args.pathways is True


def test_dockerignore_admits_exactly_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "allow-list: exclude everything, then re-include"
    included = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied: set[str] = set()
    for stage in parse(DOCKERFILE):
        for copy in stage.all("COPY"):
            if "--from=" not in copy.value:
                copied.update(copy.value.split()[:-1])
    assert copied == included
    assert all((ROOT / p).exists() for p in included)


def test_test_doubles_stay_out_of_the_image_and_out_of_the_serving_path() -> None:
    """`inference_app/testing` is excluded from the build context, so no product module may import
    it at module level (only `serve --inject-fault` does, lazily, and says why when it is absent)."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    assert "inference_app/testing/" in patterns
    offenders = []
    for path in sorted((ROOT / "inference_app").rglob("*.py")):
        if "testing" in path.relative_to(ROOT / "inference_app").parts:
            continue
        for node in ast.parse(path.read_text()).body:  # module-level statements only
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            if any(n == "inference_app.testing" or n.startswith("inference_app.testing.") for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def _inference_app_stack(**sections: object) -> StackConfig:
    """The dev stack served by inference-app from its MaxText checkpoint (so the tokenizer comes
    from `model.hf_tokenizer_path`, and the command carries --model and --tokenizer-path)."""
    values = read_stack_file(ROOT / "stacks" / "Pulumi.dev.yaml")
    values["tpu-pathways-inference:images"] = {"inference_app": "example/inference-app:0.1.0"}
    serving = sections.get("serving")
    if isinstance(serving, dict) and serving.get("engine") == "inference-app":
        model = values["tpu-pathways-inference:model"]
        values["tpu-pathways-inference:model"] = {**model, **app_model("dev")}
    values.update({f"tpu-pathways-inference:{k}": v for k, v in sections.items()})
    return parse_stack_config(values, stack="dev")


def test_the_batch_jobs_command_and_user_fit_the_image(final: Stage) -> None:
    """The batch Job runs this image with its own command and a fixed runAsUser."""
    c = _inference_app_stack(
        batch_job={"enabled": True, "input": "gs://my-batch/in.jsonl", "output": "gs://my-batch/out.jsonl"}
    )
    command = manifests.batch_command(c)
    assert command[:4] == ["python", "-m", "inference_app", "batch"]
    parser = argparse.ArgumentParser(prog="python -m inference_app batch", exit_on_error=False)
    batch_cli.add_arguments(parser)
    parser.parse_args(command[4:])
    job = manifests.batch_job(c)
    assert job is not None
    run_as = job["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    user = final.last("USER")
    assert user is not None and int(user.value.split(":")[0]) == run_as, (
        "Dockerfile USER and the Job's runAsUser differ"
    )


def test_the_images_jax_is_the_one_its_pathways_proxy_is_built_for() -> None:
    """The proxy must match the client's JAX: the image pins JAX exactly (the `tpu` extra it installs),
    and the stack deploys the Pathways images of that version with serving.engine inference-app."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["tpu"]
    (jax_pin,) = [e for e in extras if e.startswith("jax[tpu]")]
    assert jax_pin == f"jax[tpu]=={catalog.INFERENCE_APP_JAX_VERSION}", jax_pin
    serving = read_stack_file(ROOT / "stacks" / "Pulumi.dev.yaml")["tpu-pathways-inference:serving"]
    serving = {k: v for k, v in serving.items() if k != "maxtext_extra_args"}
    c = _inference_app_stack(serving={**serving, "engine": "inference-app"})
    assert c.pathways_proxy_image == catalog.pathways_proxy_image(catalog.INFERENCE_APP_JAX_VERSION)
    assert c.pathways_server_image == catalog.pathways_server_image(catalog.INFERENCE_APP_JAX_VERSION)
