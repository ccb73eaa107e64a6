"""`serve` flags -> EngineSettings/ServerOptions, flag errors, and the Pathways environment checks."""

from __future__ import annotations

import argparse
import sys
import types

import pytest

from inference_app import pathways
from inference_app.engine.settings import EngineSettings, SettingsError, settings_from_args
from inference_app.server import cli


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="serve", exit_on_error=False)
    cli.add_arguments(p)
    return p.parse_args(list(argv))


def test_defaults_are_the_engine_defaults_and_the_embedded_model() -> None:
    args = parse()
    assert settings_from_args(args) == EngineSettings()
    opts = cli.server_options(args, settings_from_args(args))
    assert (opts.host, opts.port, opts.model_name, opts.warmup) == (
        "127.0.0.1",
        8000,
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        True,
    )
    assert opts.model_aliases == ("smollm2-135m",)


def test_cluster_command_maps_onto_settings() -> None:
    # the flags the Pulumi stack renders for serving.engine: inference-app
    args = parse(
        "--host", "0.0.0.0", "--port", "8000", "--model-path", "gs://bucket/llama3.1-8b/", "--mode",
        "disaggregated", "--max-slots", "10", "--max-prefill-length", "1024", "--max-target-length", "2048",
        "--ici-fsdp-parallelism", "1", "--ici-autoregressive-parallelism", "2",
        "--ici-tensor-parallelism", "8",
        "--weight-dtype", "int8", "--kv-dtype", "int8", "--pathways", "--max-queue", "256",
        "--compilation-cache-dir", "/cache/jax",
    )  # fmt: skip
    s = settings_from_args(args)
    assert s == EngineSettings(
        model=None,
        model_path="gs://bucket/llama3.1-8b/",
        mode="disaggregated",
        max_slots=10,
        max_prefill_length=1024,
        max_target_length=2048,
        weight_dtype="int8",
        kv_dtype="int8",
        ici_fsdp_parallelism=1,
        ici_autoregressive_parallelism=2,
        ici_tensor_parallelism=8,
        compilation_cache_dir="/cache/jax",
    )
    assert args.pathways is True
    opts = cli.server_options(args, s)
    assert (opts.host, opts.max_queue, opts.model_name) == ("0.0.0.0", 256, "llama3.1-8b")


def test_empty_cache_dir_disables_the_cache_and_tensor_minus_one_fills() -> None:
    s = settings_from_args(parse("--compilation-cache-dir", "", "--ici-tensor-parallelism", "-1"))
    assert s.compilation_cache_dir is None and s.ici_tensor_parallelism == -1


@pytest.mark.parametrize(
    "argv",
    [
        ["--max-slots", "0"],
        ["--max-queue", "-1"],
        ["--weight-dtype", "fp8"],
        ["--mode", "pipelined"],
        ["--ici-tensor-parallelism", "0"],
    ],
)
def test_bad_flags_are_refused(argv: list[str]) -> None:
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        parse(*argv)


def test_prefill_limit_must_leave_room() -> None:
    with pytest.raises(
        SettingsError, match=r"--max-prefill-length .* must be smaller than --max-target-length"
    ):
        settings_from_args(parse("--max-prefill-length", "512", "--max-target-length", "512"))
    with pytest.raises(SystemExit, match=r"^serve: --max-prefill-length"):  # before anything loads
        cli.main(parse("--max-prefill-length", "512", "--max-target-length", "512"))


def test_inject_fault_spec_is_checked_before_loading() -> None:
    with pytest.raises(SystemExit, match="STAGE:MARKER"):
        cli.engine_factory(EngineSettings(), "decode:X")
    assert callable(cli.engine_factory(EngineSettings(), "prefill:X"))  # valid: nothing loaded yet


def test_inject_fault_without_the_testing_package_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """The product image leaves `inference_app.testing` out; the flag then fails with a reason."""
    monkeypatch.setitem(sys.modules, "inference_app.testing.faults", None)  # import raises ImportError
    with pytest.raises(SystemExit, match=r"test-only flag and needs inference_app\.testing"):
        cli.engine_factory(EngineSettings(), "prefill:X")


# ----- Pathways ------------------------------------------------------------------------------

PROXY_ENV = {"JAX_PLATFORMS": "proxy", "JAX_BACKEND_TARGET": "grpc://localhost:38681"}


def test_pathways_environment_checks() -> None:
    pathways.check_environment(True, PROXY_ENV)
    pathways.check_environment(False, {})
    with pytest.raises(pathways.PathwaysConfigError, match="JAX_PLATFORMS=proxy"):
        pathways.check_environment(True, {"JAX_BACKEND_TARGET": "grpc://x:1"})
    with pytest.raises(pathways.PathwaysConfigError, match="JAX_BACKEND_TARGET=grpc://"):
        pathways.check_environment(True, {"JAX_PLATFORMS": "proxy", "JAX_BACKEND_TARGET": "localhost:38681"})
    with pytest.raises(pathways.PathwaysConfigError, match="add --pathways"):
        pathways.check_environment(False, PROXY_ENV)


def test_pathways_initialize_without_the_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pathwaysutils", None)  # import fails as if not installed
    with pytest.raises(pathways.PathwaysConfigError, match="pip install pathwaysutils"):
        pathways.initialize(True, PROXY_ENV)
    assert pathways.initialize(False, {}) is False


def test_pathways_initialize_calls_pathwaysutils(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    fake = types.ModuleType("pathwaysutils")
    fake.initialize = lambda: calls.append("init")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pathwaysutils", fake)
    assert pathways.initialize(True, PROXY_ENV) is True and calls == ["init"]


def test_serve_refuses_proxy_platform_without_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAX_PLATFORMS", "proxy")
    monkeypatch.setenv("JAX_BACKEND_TARGET", "grpc://localhost:38681")
    with pytest.raises(SystemExit, match="add --pathways"):
        cli.main(parse())
