"""Typed config: the reference stacks' derived facts, and a table of invalid configs with their errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from components import catalog
from components.config import ConfigError, parse_stack_config

from .conftest import STACKS, load_stack, stack_values, variant

IMG = "us-docker.pkg.dev/my-project/inference/inference-app:0.1.0"


def test_reference_405b_derived_facts() -> None:
    c = load_stack("llama31-405b-v6e16")
    assert (c.vms_per_slice, c.chips_per_vm, c.chips_per_slice, c.slices_per_replica) == (4, 4, 16, 1)
    assert c.lws_size == 5
    assert c.parallelism == (1, 2, 8)
    assert c.slots_per_engine == 160  # per_device_batch_size 10 x 16 chips
    assert c.multi_host and c.slice_count == 1
    needed, usable = c.memory_estimate_bytes
    assert needed < usable  # 405B int8 + int8 KV for 160 slots fits a v6e-16 (~457 of ~486 GiB)
    assert needed > 0.9 * usable  # ...and only just: the estimate is not vacuous


def test_reference_70b_disaggregated_derived_facts() -> None:
    c = load_stack("llama2-70b-disagg")
    assert (c.vms_per_slice, c.chips_per_slice, c.slices_per_replica, c.slice_count) == (2, 8, 2, 2)
    assert c.lws_size == 5
    assert c.parallelism == (1, 1, 8)  # tensor -1 fills one engine's slice
    needed, usable = c.memory_estimate_bytes
    assert needed < usable


def test_dev_stack_is_small_spot_and_deletable() -> None:
    c = load_stack("dev")
    assert c.tpu.capacity == "spot" and c.environment == "development" and not c.cluster.deletion_protection
    assert c.tpu.generation == "v6e" and c.chips_per_slice == 1
    assert c.model_spec.params > 8e9 * 0.99
    # The next smaller option does not exist; the memory estimate must still pass for 8B bf16.
    needed, usable = c.memory_estimate_bytes
    assert needed < usable


@pytest.mark.parametrize("stack", STACKS)
def test_stacks_hold_placeholders_not_project_ids(stack: str) -> None:
    values = stack_values(stack)
    assert values["gcp:project"] == "your-gcp-project-id"
    assert "your-" in values["tpu-pathways-inference:model"]["checkpoint"]


def test_runtime_json_strings_parse_like_the_stack_file() -> None:
    values = stack_values("llama2-70b-disagg")
    as_json = {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}
    assert parse_stack_config(as_json, stack="llama2-70b-disagg") == load_stack("llama2-70b-disagg")


def test_other_namespaces_are_left_to_their_providers() -> None:
    values = {**stack_values("dev"), "gcp:region": "us-east5", "kubernetes:enableServerSideApply": "true"}
    assert parse_stack_config(values, stack="dev").project == "your-gcp-project-id"


# (case id, base stack, section overrides, expected fragment of the error)
INVALID: list[tuple[str, str, dict[str, Any], str]] = [
    ("unknown-nested-key", "dev", {"serving": {"max_slot": 4}}, "serving.max_slot: unknown key"),
    (
        "topology-not-in-generation",
        "dev",
        {"tpu": {"topology": "3x3"}},
        "tpu.topology: '3x3' is not a v6e topology",
    ),
    (
        "machine-type-of-other-generation",
        "dev",
        {"tpu": {"machine_type": "ct5lp-hightpu-4t"}},
        "tpu.machine_type: 'ct5lp-hightpu-4t' is not a v6e machine type",
    ),
    (
        "topology-not-on-machine-type",
        "llama31-405b-v6e16",
        {"tpu": {"machine_type": "ct6e-standard-8t"}},
        "tpu.topology: 4x4 is not offered on ct6e-standard-8t",
    ),
    (
        "parallelism-product",
        "llama31-405b-v6e16",
        {"serving": {"parallelism": {"fsdp": 1, "autoregressive": 2, "tensor": 4}}},
        "fsdp x autoregressive x tensor = 8, but the slice has 16 chips",
    ),
    (
        "two-fill-values",
        "llama31-405b-v6e16",
        {"serving": {"parallelism": {"fsdp": -1, "autoregressive": 2, "tensor": -1}}},
        "at most one of fsdp, autoregressive, tensor may be -1",
    ),
    (
        "fill-does-not-divide",
        "llama31-405b-v6e16",
        {"serving": {"parallelism": {"fsdp": 1, "autoregressive": 3, "tensor": -1}}},
        "3 does not divide the 16 chips",
    ),
    (
        "prefill-not-below-target",
        "dev",
        {"serving": {"max_prefill_predict_length": 2048}},
        "serving.max_prefill_predict_length: 2048 must be < serving.max_target_length (2048)",
    ),
    (
        "does-not-fit-hbm",
        "llama31-405b-v6e16",
        {"serving": {"per_device_batch_size": 20}},
        # JetStream keeps the embedding and logits in bf16 (AQT quantizes only the layers' kernels).
        "llama3.1-405b needs ~539 GiB per engine (weights 382 GiB + KV cache for 320 slots x 2048 tokens)",
    ),
    (
        "405b-bf16-on-v6e16",
        "llama31-405b-v6e16",
        {"model": {"quantization": "none", "checkpoint_is_quantized": False}},
        "usable HBM",
    ),
    (
        "checkpoint-not-gcs",
        "dev",
        {"model": {"checkpoint": "s3://bucket/ckpt"}},
        "model.checkpoint: 's3://bucket/ckpt' must start with gs://",
    ),
    (
        "checkpoint-bad-bucket",
        "dev",
        {"model": {"checkpoint": "gs://Bad_Bucket/ckpt"}},
        "bucket 'Bad_Bucket' is not a valid GCS bucket name",
    ),
    (
        "checkpoint-no-object",
        "dev",
        {"model": {"checkpoint": "gs://bucket"}},
        "needs an object path after the bucket",
    ),
    (
        "v6e-old-gke",
        "dev",
        {"cluster": {"min_master_version": "1.30.5-gke.1000"}},
        "cluster.min_master_version: TPU v6e needs GKE >= 1.31.2-gke.1115000",
    ),
    (
        "reservation-without-name",
        "dev",
        {"tpu": {"capacity": "reservation"}},
        "tpu.reservation: required when tpu.capacity is reservation",
    ),
    (
        "reservation-name-with-spot",
        "dev",
        {"tpu": {"reservation": "r1"}},
        "tpu.reservation: only used with tpu.capacity: reservation",
    ),
    (
        "production-without-protection",
        "llama31-405b-v6e16",
        {"cluster": {"deletion_protection": False}},
        "cluster.deletion_protection: must be true in production",
    ),
    (
        "latest-image",
        "dev",
        {"images": {"pathways_server": "us-docker.pkg.dev/cloud-tpu-v2-images/pathways/server:latest"}},
        "images.pathways_server: 'us-docker.pkg.dev/cloud-tpu-v2-images/pathways/server:latest' uses :latest",
    ),
    (
        "untagged-image",
        "dev",
        {"images": {"jetstream_http": "us-docker.pkg.dev/x/y/jetstream-http"}},
        "images.jetstream_http: 'us-docker.pkg.dev/x/y/jetstream-http' must be registry/path:tag",
    ),
    (
        "inference-app-without-image",
        "dev",
        {"serving": {"engine": "inference-app", "maxtext_extra_args": None}},
        "images.inference_app: required with serving.engine: inference-app",
    ),
    (
        "maxtext-cannot-serve-smollm2",
        "dev",
        {"model": {"name": "smollm2-135m", "tokenizer_path": None}},
        "model.name: smollm2-135m is not a MaxText model",
    ),
    (
        "unknown-model",
        "dev",
        {"model": {"name": "llama4-8b"}},
        "model.name: 'llama4-8b' is not in the catalog",
    ),
    (
        "zone-without-generation",
        "dev",
        {"cluster": {"zone": "europe-west1-b"}},
        "cluster.zone: v6e is not known in europe-west1-b",
    ),
    (
        "existing-cluster-needs-context",
        "dev",
        {"cluster": {"create": False}},
        "cluster.context: required with cluster.create: false",
    ),
    (
        "context-only-for-existing",
        "dev",
        {"cluster": {"context": "gke_x"}},
        "cluster.context: only for an existing cluster",
    ),
    (
        "namespace-not-dns",
        "dev",
        {"serving": {"namespace": "Inference_NS"}},
        "serving.namespace: 'Inference_NS' must be a lowercase DNS label",
    ),
    (
        "extra-arg-shadows-typed-field",
        "dev",
        {"serving": {"maxtext_extra_args": {"per_device_batch_size": "8"}}},
        "serving.maxtext_extra_args: per_device_batch_size are generated from the typed config",
    ),
    ("lws-version-format", "dev", {"lws": {"version": "0.10"}}, "lws.version: '0.10' must look like v0.10.0"),
    ("lws-too-old", "dev", {"lws": {"version": "v0.3.0"}}, "lws.version: v0.3.0 predates subgroups"),
    (
        "autoscaling-min-above-max",
        "dev",
        {"autoscaling": {"enabled": True, "min_replicas": 3, "max_replicas": 2}},
        "autoscaling.min_replicas: 3 exceeds autoscaling.max_replicas (2)",
    ),
    (
        "autoscaling-with-replicas",
        "dev",
        {"autoscaling": {"enabled": True}, "serving": {"replicas": 2}},
        "serving.replicas: remove it when autoscaling is enabled",
    ),
    (
        "batch-without-paths",
        "dev",
        {"batch_job": {"enabled": True}, "images": {"inference_app": IMG}},
        "batch_job.input: required when batch_job.enabled",
    ),
    (
        "batch-without-image",
        "dev",
        {"batch_job": {"enabled": True, "input": "gs://b/in.jsonl", "output": "gs://b/out.jsonl"}},
        "images.inference_app: required with batch_job.enabled",
    ),
    (
        "scratch-bucket-too-long",
        "dev",
        {"storage": {"scratch_bucket": "x" * 70}},
        "storage.scratch_bucket: '" + "x" * 70,
    ),
    (
        "startup-longer-than-timeout",
        "dev",
        {"serving": {"ready_timeout_seconds": 200}},
        "serving.ready_timeout_seconds: 200 must exceed serving.probes.startup_initial_delay_seconds (300)",
    ),
    (
        "drain-timeout-zero",
        "dev",
        {
            "serving": {"engine": "inference-app", "drain_timeout_seconds": 0},
            "images": {"inference_app": IMG},
        },
        "serving.drain_timeout_seconds: Input should be greater than or equal to 1",
    ),
    (
        "drain-timeout-with-jetstream",
        "dev",
        {"serving": {"drain_timeout_seconds": 60}},
        "serving.drain_timeout_seconds: only used by engine inference-app",
    ),
    (
        "prometheus-port-generated-with-autoscaling",
        "dev",
        {"autoscaling": {"enabled": True}, "serving": {"maxtext_extra_args": {"prometheus_port": "9090"}}},
        "serving.maxtext_extra_args: prometheus_port is generated when autoscaling.enabled",
    ),
    (
        "wrong-type",
        "dev",
        {"serving": {"per_device_batch_size": "many"}},
        "serving.per_device_batch_size: Input should be a valid integer",
    ),
]


@pytest.mark.parametrize(
    ("stack", "overrides", "expected"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_config_is_refused_with_a_named_field(
    stack: str, overrides: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_stack_config(variant(stack, **overrides), stack=stack)
    assert expected in str(err.value), str(err.value)


def test_the_table_is_large_enough() -> None:
    assert len(INVALID) >= 15


def test_unknown_top_level_key_is_an_error() -> None:
    values = {**stack_values("dev"), "tpu-pathways-inference:modle": {"name": "x"}}
    with pytest.raises(ConfigError, match="tpu-pathways-inference:modle: unknown key"):
        parse_stack_config(values, stack="dev")


def test_missing_project_is_an_error() -> None:
    values = {k: v for k, v in stack_values("dev").items() if k != "gcp:project"}
    with pytest.raises(ConfigError, match="gcp:project: required"):
        parse_stack_config(values, stack="dev")


def test_all_problems_are_reported_at_once() -> None:
    values = variant("dev", tpu={"capacity": "reservation"}, serving={"max_prefill_predict_length": 4096})
    with pytest.raises(ConfigError) as err:
        parse_stack_config(values, stack="dev")
    assert "tpu.reservation" in str(err.value) and "serving.max_prefill_predict_length" in str(err.value)


def test_valid_variants_are_accepted() -> None:
    c = parse_stack_config(
        variant(
            "dev",
            tpu={"capacity": "reservation", "reservation": "my-res"},
            cluster={"min_master_version": "1.32"},
            serving={"engine": "inference-app", "maxtext_extra_args": None},
            model={"name": "smollm2-135m", "tokenizer_path": None},
            images={"inference_app": IMG},
        ),
        stack="dev",
    )
    assert c.cluster.min_master_version == "1.32"
    assert c.serving.engine == "inference-app"
    assert load_stack("dev").cluster.min_master_version is None  # the channel's default version
    assert load_stack("dev").required_gke_version == catalog.TPU_GENERATIONS["v6e"].min_gke_version
