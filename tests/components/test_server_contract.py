"""The commands the manifests give our image parse with the app's own CLI (the two sides of one contract).

components/ cannot import inference_app; this test may, so a renamed flag on either side fails here.
"""

from __future__ import annotations

import argparse

import pytest

from components import catalog, manifests
from components.config import StackConfig

from .conftest import app_model, variant_config

IMG = "us-docker.pkg.dev/my-project/inference/inference-app:0.1.0"


def _config(stack: str, **model: object) -> StackConfig:
    """The stack served by inference-app from its MaxText checkpoint (or `model` changes)."""
    return variant_config(
        stack,
        serving={"engine": "inference-app", "maxtext_extra_args": None},
        images={"inference_app": IMG},
        model=app_model(stack, **model),
        batch_job={"enabled": True, "input": "gs://in-bucket/p.jsonl", "output": "gs://out-bucket/r.jsonl"},
    )


def _parse(module_add_arguments: object, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(exit_on_error=False)
    module_add_arguments(parser)  # type: ignore[operator]
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    ("stack", "model"),
    [
        ("llama2-70b-disagg", {}),
        ("dev", {}),
        ("dev", {"quantization": "int8", "quantize_kvcache": True}),
        ("llama31-405b-v6e16", {}),
        ("dev", {"checkpoint": "gs://my-models/llama3.1-8b-hf", "hf_tokenizer_path": None}),  # HF: no flags
    ],
)
def test_serve_command_parses_with_the_server_cli(stack: str, model: dict[str, object]) -> None:
    from inference_app.engine.settings import settings_from_args
    from inference_app.server import cli

    c = _config(stack, **model)
    command = manifests.inference_app_command(c)
    assert command[:4] == ["python", "-m", "inference_app", "serve"]
    args = _parse(cli.add_arguments, command[4:])
    settings = settings_from_args(args)  # the server's own rules accept what the stack renders
    assert args.port == catalog.HTTP_PORT and args.host == "0.0.0.0"
    assert settings.model_path == c.model.checkpoint and args.mode == c.serving.mode
    assert settings.tokenizer_path == c.model.hf_tokenizer_path
    assert settings.model == (c.model_spec.maxtext_name if c.app_restores_maxtext else None)
    assert args.max_slots == c.slots_per_engine
    assert (
        args.ici_fsdp_parallelism,
        args.ici_autoregressive_parallelism,
        args.ici_tensor_parallelism,
    ) == c.parallelism
    assert args.pathways is True
    assert args.weight_dtype == ("int8" if c.model.quantization == "int8" else c.model.weight_dtype)
    assert args.drain_timeout == c.serving.drain_timeout_seconds


@pytest.mark.parametrize("name", sorted(n for n, m in catalog.MODELS.items() if m.maxtext_name is not None))
def test_every_maxtext_model_is_an_architecture_the_server_restores(name: str) -> None:
    """`--model <maxtext_name>` names the server's architecture, and both catalogs describe the same model."""
    from inference_app.model.catalog import ARCHITECTURES

    spec = catalog.MODELS[name]
    assert spec.maxtext_name in ARCHITECTURES
    cfg = ARCHITECTURES[spec.maxtext_name].config
    assert (spec.layers, spec.q_heads, spec.kv_heads, spec.head_dim, spec.hidden, spec.vocab) == (
        cfg.num_layers,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.hidden_size,
        cfg.vocab_size,
    )
    assert spec.tied_embeddings == cfg.tie_embeddings
    per_layer = cfg.hidden_size * (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim  # q, k, v
    per_layer += cfg.num_heads * cfg.head_dim * cfg.hidden_size + 3 * cfg.hidden_size * cfg.ffn_size
    per_layer += 2 * cfg.hidden_size  # the two norms
    assert spec.params == spec.vocab_params + cfg.num_layers * per_layer + cfg.hidden_size  # + final norm
    assert spec.layer_params == per_layer


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
