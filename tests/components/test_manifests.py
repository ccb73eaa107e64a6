"""Rendered objects: schema-valid (LWS against the official CRDs, built-ins strictly), and right."""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from components import catalog, manifests
from components.config import StackConfig

from .conftest import LWS_CRD_VERSIONS, STACKS, load_stack, lws_validator, variant_config

IMG = "us-docker.pkg.dev/my-project/inference/inference-app:0.1.0"
K8S_VERSIONS = ("1.31.0", "1.33.0")  # GKE's v6e minimum, and a current minor


def _inference_app(stack: str, **extra: dict[str, Any]) -> StackConfig:
    sections: dict[str, dict[str, Any]] = {
        "serving": {"engine": "inference-app", "maxtext_extra_args": None},
        "images": {"inference_app": IMG},
        **extra,
    }
    return variant_config(stack, **sections)


def _everything(stack: str) -> StackConfig:
    """A variant with every optional object: namespace, HPA, batch Job."""
    return _inference_app(
        stack,
        serving={"engine": "inference-app", "maxtext_extra_args": None, "namespace": "llm"},
        autoscaling={"enabled": True, "min_replicas": 1, "max_replicas": 3},
        batch_job={
            "enabled": True,
            "input": "gs://my-data/prompts.jsonl",
            "output": "gs://my-results/out.jsonl",
        },
    )


def _configs() -> list[tuple[str, StackConfig]]:
    out = [(s, load_stack(s)) for s in STACKS]
    out += [(f"{s}+inference-app", _inference_app(s)) for s in ("llama2-70b-disagg", "dev")]
    out += [(f"{s}+everything", _everything(s)) for s in ("llama31-405b-v6e16", "dev")]
    return out


CONFIGS = _configs()


@pytest.mark.parametrize("crd_version", LWS_CRD_VERSIONS)
@pytest.mark.parametrize(("label", "config"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_lws_validates_against_the_official_crd(label: str, config: StackConfig, crd_version: str) -> None:
    lws_validator(crd_version).validate(manifests.leader_worker_set(config))


def test_crd_schema_rejects_unknown_fields() -> None:
    lws = manifests.leader_worker_set(load_stack("dev"))
    lws["spec"]["leaderWorkerTemplate"]["sizee"] = 3
    with pytest.raises(jsonschema.ValidationError, match="sizee"):
        lws_validator("v0.10.0").validate(lws)


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
@pytest.mark.parametrize(("label", "config"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_builtin_kinds_validate_strictly(label: str, config: StackConfig, k8s_version: str) -> None:
    builtins = [o for o in manifests.workload_objects(config) if o["kind"] != "LeaderWorkerSet"]
    assert builtins
    for obj in builtins:
        kubernetes_validate.validate(obj, k8s_version, strict=True)


def test_strict_validation_rejects_unknown_fields() -> None:
    svc = manifests.service(load_stack("dev"))
    svc["spec"]["portz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(svc, K8S_VERSIONS[0], strict=True)


def _containers(lws: dict[str, Any], role: str) -> dict[str, dict[str, Any]]:
    spec = lws["spec"]["leaderWorkerTemplate"][f"{role}Template"]["spec"]
    return {c["name"]: c for c in spec["containers"]}


@pytest.mark.parametrize(("label", "config"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_group_shape_follows_the_slice(label: str, config: StackConfig) -> None:
    lws = manifests.leader_worker_set(config)
    template = lws["spec"]["leaderWorkerTemplate"]
    assert template["size"] == config.slices_per_replica * config.vms_per_slice + 1
    worker = _containers(lws, "worker")["worker"]
    assert worker["resources"]["limits"][catalog.TPU_RESOURCE] == str(config.chips_per_vm)
    rm = _containers(lws, "leader")["pathways-rm"]
    assert f"--instance_count={config.slices_per_replica}" in rm["args"]
    assert f"--instance_type=tpuv6e:{config.tpu.topology}" in rm["args"]
    if config.serving.mode == "disaggregated":
        assert template["subGroupPolicy"] == {"subGroupSize": config.vms_per_slice}
    else:
        assert "subGroupPolicy" not in template
    for role in ("leader", "worker"):
        for c in _containers(lws, role).values():
            assert not c["image"].endswith(":latest")
            assert all(
                config.scratch_location in a
                for a in c.get("args", [])
                if a.startswith("--gcs_scratch_location")
            )


def test_inference_app_engine_replaces_jetstream() -> None:
    c = _inference_app("llama2-70b-disagg")
    leader = _containers(manifests.leader_worker_set(c), "leader")
    assert list(leader) == ["pathways-proxy", "pathways-rm", "inference-app"]
    app = leader["inference-app"]
    assert app["image"] == IMG
    assert app["command"] == [
        "python", "-m", "inference_app", "serve",
        "--host", "0.0.0.0", "--port", "8000",
        "--model-path", "gs://your-checkpoint-bucket/llama2-70b/int8",
        "--mode", "disaggregated",
        "--max-slots", "8",
        "--max-prefill-length", "1024",
        "--max-target-length", "2048",
        "--ici-fsdp-parallelism", "1",
        "--ici-autoregressive-parallelism", "1",
        "--ici-tensor-parallelism", "8",
        "--weight-dtype", "int8",
        "--kv-dtype", "int8",
        "--pathways",
    ]  # fmt: skip
    env = {e["name"]: e["value"] for e in app["env"]}
    assert env["JAX_PLATFORMS"] == "proxy"
    assert env["JAX_BACKEND_TARGET"] == "grpc://localhost:38681"
    assert env["LOG_LEVEL"] == "INFO"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert app[probe]["httpGet"] == {"path": "/healthcheck", "port": 8000, "scheme": "HTTP"}
    assert app["ports"] == [{"containerPort": 8000}]
    assert manifests.service(c)["spec"]["ports"][0]["targetPort"] == 8000


def test_jetstream_engine_has_http_front_end_and_flags() -> None:
    c = load_stack("llama31-405b-v6e16")
    leader = _containers(manifests.leader_worker_set(c), "leader")
    assert list(leader) == ["pathways-proxy", "pathways-rm", "jax-tpu", "jetstream-http"]
    args = leader["jax-tpu"]["args"]
    assert args[0] == "MaxText/configs/v5e/inference/llama3_405b_v5e-64.yml"
    assert "ici_autoregressive_parallelism=2" in args and "per_device_batch_size=10" in args
    assert not any(a.startswith("inference_server=") for a in args)
    disagg = _containers(manifests.leader_worker_set(load_stack("llama2-70b-disagg")), "leader")["jax-tpu"]
    assert "inference_server=ExperimentalMaxtextDisaggregatedServer_8" in disagg["args"]
    assert disagg["securityContext"]["capabilities"]["add"] == ["SYS_PTRACE", "NET_ADMIN", "SYS_TIME"]


def test_lws_waits_for_available_longer_than_the_restore() -> None:
    c = load_stack("llama31-405b-v6e16")
    ann = manifests.leader_worker_set(c)["metadata"]["annotations"]
    assert ann["pulumi.com/waitFor"] == "condition=Available"
    assert int(ann["pulumi.com/timeoutSeconds"]) > c.serving.probes.startup_initial_delay_seconds


def test_hpa_targets_the_lws_scale_subresource() -> None:
    c = _everything("dev")
    hpa = manifests.horizontal_pod_autoscaler(c)
    assert hpa is not None
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "name": "jetstream-pathways",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    metric = hpa["spec"]["metrics"][0]
    assert metric["type"] == "Pods"
    assert (
        metric["pods"]["metric"]["name"] == "prometheus.googleapis.com|inference_queue_depth|gauge"
    )  # our server's gauge
    assert manifests.leader_worker_set(c)["spec"]["replicas"] == 1
    assert manifests.horizontal_pod_autoscaler(load_stack("dev")) is None  # off by default
    external = variant_config(
        "dev", autoscaling={"enabled": True, "metric_type": "External", "metric_name": "m|x"}
    )
    ext_hpa = manifests.horizontal_pod_autoscaler(external)
    assert ext_hpa is not None
    assert ext_hpa["spec"]["metrics"][0]["external"]["metric"]["name"] == "m|x"
    jetstream = manifests.horizontal_pod_autoscaler(variant_config("dev", autoscaling={"enabled": True}))
    assert jetstream is not None
    assert (
        jetstream["spec"]["metrics"][0]["pods"]["metric"]["name"]
        == catalog.AUTOSCALING_METRICS["jetstream-maxtext"]
    )


def test_batch_job_runs_the_client_against_the_in_cluster_service() -> None:
    c = _everything("dev")
    job = manifests.batch_job(c)
    assert job is not None
    assert job["metadata"]["namespace"] == "llm"
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == IMG
    assert container["command"] == [
        "python", "-m", "inference_app", "batch",
        "--input", "gs://my-data/prompts.jsonl",
        "--output", "gs://my-results/out.jsonl",
        "--endpoint", "http://jetstream-svc.llm.svc:8000",
        "--concurrency", "8",
        "--max-tokens", "256",
    ]  # fmt: skip
    ksa = manifests.batch_service_account(c)
    assert ksa is not None and pod["serviceAccountName"] == ksa["metadata"]["name"]
    assert (
        ksa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
        == "dev-batch-job@your-gcp-project-id.iam.gserviceaccount.com"
    )
    assert job["metadata"]["annotations"]["pulumi.com/skipAwait"] == "true"
    assert manifests.batch_job(load_stack("dev")) is None


def test_namespace_object_only_when_not_default() -> None:
    assert manifests.namespace(load_stack("dev")) is None
    kinds = [o["kind"] for o in manifests.workload_objects(_everything("dev"))]
    assert kinds == [
        "Namespace",
        "LeaderWorkerSet",
        "Service",
        "HorizontalPodAutoscaler",
        "ServiceAccount",
        "Job",
    ]
