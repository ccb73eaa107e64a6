"""The commands the manifests give our image parse with the app's own CLI (the two sides of one contract).

components/ cannot import inference_app; this test may, so a renamed flag on either side fails here.
"""

from __future__ import annotations

import argparse

import pytest

from components import catalog, manifests
from components.config import StackConfig

from .conftest import variant_config

IMG = "us-docker.pkg.dev/my-project/inference/inference-app:0.1.0"


def _config(stack: str, **model: object) -> StackConfig:
    return variant_config(
        stack,
        serving={"engine": "inference-app", "maxtext_extra_args": None},
        images={"inference_app": IMG},
        model=model,
        batch_job={"enabled": True, "input": "gs://in-bucket/p.jsonl", "output": "gs://out-bucket/r.jsonl"},
    )


def _parse(module_add_arguments: object, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(exit_on_error=False)
    module_add_arguments(parser)  # type: ignore[operator]
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    ("stack", "model"),
    [("llama2-70b-disagg", {}), ("dev", {}), ("dev", {"quantization": "int8", "quantize_kvcache": True})],
)
def test_serve_command_parses_with_the_server_cli(stack: str, model: dict[str, object]) -> None:
    from inference_app.server import cli

    c = _config(stack, **model)
    command = manifests.inference_app_command(c)
    assert command[:4] == ["python", "-m", "inference_app", "serve"]
    args = _parse(cli.add_arguments, command[4:])
    assert args.port == catalog.HTTP_PORT and args.host == "0.0.0.0"
    assert args.model_path == c.model.checkpoint and args.mode == c.serving.mode
    assert args.max_slots == c.slots_per_engine
    assert (
        args.ici_fsdp_parallelism,
        args.ici_autoregressive_parallelism,
        args.ici_tensor_parallelism,
    ) == c.parallelism
    assert args.pathways is True
    assert args.weight_dtype == ("int8" if c.model.quantization == "int8" else c.model.weight_dtype)
    assert args.drain_timeout == c.serving.drain_timeout_seconds


def test_autoscaling_metric_is_served_where_the_pod_monitoring_scrapes() -> None:
    """The PodMonitoring's path is a route of our app, and the HPA's gauge is one it exports."""
    from inference_app.orchestrator.metrics import ServingMetrics
    from inference_app.server.app import create_app
    from inference_app.server.options import ServerOptions

    app = create_app(
        ServerOptions(), engine_factory=lambda: pytest.fail("no engine is loaded without a lifespan")
    )
    assert catalog.METRICS_PATH in app.openapi()["paths"]
    gauge = catalog.AUTOSCALING_METRICS["inference-app"].split("|")[1]
    exported = ServingMetrics().render().decode()
    assert f"# TYPE {gauge} gauge" in exported


def test_batch_command_parses_with_the_batch_cli() -> None:
    from inference_app.batch import cli as batch

    c = _config("dev")
    command = manifests.batch_command(c)
    args = _parse(batch.add_arguments, command[4:])
    assert (args.input, args.output) == ("gs://in-bucket/p.jsonl", "gs://out-bucket/r.jsonl")
    assert args.endpoint == "http://jetstream-svc.default.svc:8000"
    assert (args.concurrency, args.max_tokens) == (8, 256)
