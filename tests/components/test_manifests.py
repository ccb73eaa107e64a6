"""Rendered objects: schema-valid (LWS against the official CRDs, built-ins strictly), and right."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from components import catalog, config_rules, manifests
from components.config import StackConfig

from .conftest import LWS_CRD_VERSIONS, STACKS, app_model, load_stack, lws_validator, variant_config

IMG = "us-docker.pkg.dev/my-project/inference/inference-app:0.1.0"
K8S_VERSIONS = ("1.31.0", "1.33.0")  # GKE's v6e minimum, and a current minor


def _inference_app(stack: str, **extra: dict[str, Any]) -> StackConfig:
    """The stack served by inference-app from its MaxText checkpoint."""
    sections: dict[str, dict[str, Any]] = {
        "serving": {"engine": "inference-app", "maxtext_extra_args": None},
        "images": {"inference_app": IMG},
        **extra,
        "model": app_model(stack, **extra.get("model", {})),
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
    # Built-in API groups have no dot; custom resources (LWS, PodMonitoring) are checked elsewhere.
    builtins = [o for o in manifests.workload_objects(config) if "." not in o["apiVersion"].split("/")[0]]
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
        "--model", "llama2-70b",
        "--tokenizer-path", "gs://your-checkpoint-bucket/llama2-70b/hf-tokenizer",
        "--mode", "disaggregated",
        "--max-slots", "8",
        "--max-prefill-length", "1024",
        "--max-target-length", "2048",
        "--ici-fsdp-parallelism", "1",
        "--ici-autoregressive-parallelism", "1",
        "--ici-tensor-parallelism", "8",
        "--weight-dtype", "int8",
        "--kv-dtype", "int8",
        "--drain-timeout", "120",
        "--pathways",
    ]  # fmt: skip
    env = {e["name"]: e["value"] for e in app["env"]}
    assert env["JAX_PLATFORMS"] == "proxy"
    assert env["JAX_BACKEND_TARGET"] == "grpc://localhost:38681"
    assert env["LOG_LEVEL"] == "INFO"
    assert env["ENABLE_PATHWAYS_PERSISTENCE"] == "1"  # the TPU workers read the MaxText checkpoint
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert app[probe]["httpGet"] == {"path": "/healthcheck", "port": 8000, "scheme": "HTTP"}
    assert app["ports"] == [{"containerPort": 8000}]
    assert manifests.service(c)["spec"]["ports"][0]["targetPort"] == 8000


def test_hugging_face_or_gguf_checkpoints_need_no_model_or_tokenizer_flags() -> None:
    """They describe themselves; only a MaxText checkpoint gets --model, --tokenizer-path and persistence."""
    c = _inference_app("dev", model={"hf_tokenizer_path": None, "checkpoint": "gs://my-models/llama-hf"})
    app = _containers(manifests.leader_worker_set(c), "leader")["inference-app"]
    assert "--model" not in app["command"] and "--tokenizer-path" not in app["command"]
    assert "ENABLE_PATHWAYS_PERSISTENCE" not in {e["name"] for e in app["env"]}


@pytest.mark.parametrize(
    ("stack", "gib"),
    [
        # 405B int8 on disk: 4 GiB + 2 x one layer (3.19e9 params) x 1 byte; the model is ~378 GiB.
        ("llama31-405b-v6e16", 10),
        # 8B bf16: its embedding (128256 x 4096 = 525M params) outweighs a layer (218M); 2 bytes each.
        ("dev", 6),
    ],
)
def test_the_model_container_requests_memory_for_streaming_not_the_model(stack: str, gib: int) -> None:
    c = _inference_app(stack)
    app = _containers(manifests.leader_worker_set(c), "leader")["inference-app"]
    assert app["resources"] == {"requests": {"memory": f"{gib}Gi"}}
    weights_gib = c.model_spec.params * (1 if c.model.checkpoint_is_quantized else 2) / catalog.GIB
    assert gib < weights_gib / 2  # far below the model (a 405B request for it would fit no node)


def test_leader_grace_period_covers_the_drain() -> None:
    """Kubernetes' default 30 s grace would SIGKILL our server mid-drain.

    JetStream renders keep the guide's grace period."""
    leader = manifests.leader_worker_set(_inference_app("dev"))["spec"]["leaderWorkerTemplate"][
        "leaderTemplate"
    ]
    assert leader["spec"]["terminationGracePeriodSeconds"] == 120 + manifests.DRAIN_GRACE_MARGIN_SECONDS
    custom = _inference_app(
        "dev", serving={"engine": "inference-app", "maxtext_extra_args": None, "drain_timeout_seconds": 600}
    )
    app = _containers(manifests.leader_worker_set(custom), "leader")["inference-app"]
    assert app["command"][app["command"].index("--drain-timeout") + 1] == "600"
    custom_leader = manifests.leader_worker_set(custom)["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
    assert custom_leader["spec"]["terminationGracePeriodSeconds"] > 600
    for stack in STACKS:
        jetstream = manifests.leader_worker_set(load_stack(stack))["spec"]["leaderWorkerTemplate"]
        assert "terminationGracePeriodSeconds" not in jetstream["leaderTemplate"]["spec"]


# --------------------------------------------------------------- the HPA's metric source

_PROM_DURATION = re.compile(r"^([0-9]+(ms|s|m|h))+$")


def _selects(selector: dict[str, Any], pod_labels: dict[str, str]) -> bool:
    """LabelSelector semantics for matchLabels (the only form we render)."""
    assert set(selector) == {"matchLabels"}
    return all(pod_labels.get(k) == v for k, v in selector["matchLabels"].items())


def _pod_labels(lws: dict[str, Any], role: str, worker_index: int) -> dict[str, str]:
    """Labels a pod of `role` gets: its template's, plus the worker index LWS adds (leader = 0)."""
    template = lws["spec"]["leaderWorkerTemplate"][f"{role}Template"]
    labels = dict(template.get("metadata", {}).get("labels", {}))
    labels[catalog.LWS_WORKER_INDEX_LABEL] = str(worker_index)
    return labels


def _check_pod_monitoring_schema(pm: dict[str, Any]) -> None:
    """Managed Prometheus' PodMonitoring v1 facts: spec.selector + 1..10 endpoints with port and interval."""
    assert (pm["apiVersion"], pm["kind"]) == ("monitoring.googleapis.com/v1", "PodMonitoring")
    assert set(pm) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(pm["spec"]) == {"selector", "endpoints"}
    assert 1 <= len(pm["spec"]["endpoints"]) <= 10
    for endpoint in pm["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "timeout", "scheme"}
        assert isinstance(endpoint["port"], int) and 0 < endpoint["port"] < 65536
        assert _PROM_DURATION.match(endpoint["interval"])
        assert endpoint["path"].startswith("/")


@pytest.mark.parametrize("engine", ["inference-app", "jetstream-maxtext"])
def test_pod_monitoring_scrapes_only_the_leaders_metrics_port(engine: str) -> None:
    if engine == "inference-app":
        c = _everything("dev")
        server, port = "inference-app", catalog.HTTP_PORT
    else:
        c = variant_config("llama31-405b-v6e16", autoscaling={"enabled": True, "max_replicas": 2})
        server, port = "jax-tpu", catalog.JETSTREAM_METRICS_PORT
    pm = manifests.pod_monitoring(c)
    assert pm is not None
    _check_pod_monitoring_schema(pm)
    assert pm["metadata"]["namespace"] == c.serving.namespace  # PodMonitoring is namespaced
    lws = manifests.leader_worker_set(c)
    selector = pm["spec"]["selector"]
    assert _selects(selector, _pod_labels(lws, "leader", 0))
    for index in range(1, c.lws_size):  # workers run no server: never scraped
        assert not _selects(selector, _pod_labels(lws, "worker", index))
        assert not _selects(
            selector, {**_pod_labels(lws, "leader", 0), catalog.LWS_WORKER_INDEX_LABEL: str(index)}
        )
    (endpoint,) = pm["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == (port, catalog.METRICS_PATH)
    assert {"containerPort": port} in _containers(lws, "leader")[server]["ports"]
    # The HPA reads what this scrape produces: the metric name is the scraped gauge's.
    hpa = manifests.horizontal_pod_autoscaler(c)
    assert hpa is not None
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == catalog.AUTOSCALING_METRICS[engine]


def test_jetstream_exports_metrics_only_with_autoscaling() -> None:
    """prometheus_port= is a deliberate difference from the guide only when autoscaling is on."""
    plain = load_stack("llama31-405b-v6e16")
    assert manifests.pod_monitoring(plain) is None
    jax = _containers(manifests.leader_worker_set(plain), "leader")["jax-tpu"]
    assert not any(a.startswith("prometheus_port=") for a in jax["args"])
    assert jax["ports"] == [{"containerPort": catalog.JETSTREAM_PORT}]
    scaled = variant_config("llama31-405b-v6e16", autoscaling={"enabled": True})
    jax = _containers(manifests.leader_worker_set(scaled), "leader")["jax-tpu"]
    assert f"prometheus_port={catalog.JETSTREAM_METRICS_PORT}" in jax["args"]
    assert jax["ports"][-1] == {"containerPort": catalog.JETSTREAM_METRICS_PORT}


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
        "PodMonitoring",
        "HorizontalPodAutoscaler",
        "ServiceAccount",
        "Job",
    ]


def _generated_maxtext_keys(config: StackConfig) -> set[str]:
    """Flag names `maxtext_args` emits from typed fields (the extra args and the config file excluded)."""
    flags = manifests.maxtext_args(config)[1:]
    return {f.split("=", 1)[0] for f in flags} - set(config.serving.maxtext_extra_args)


def test_generated_maxtext_keys_are_exactly_what_the_manifests_emit() -> None:
    """The rule refusing `maxtext_extra_args` that repeat a generated flag uses the real list.

    Every branch of `maxtext_args` is taken by one of these configs (tokenizer set, int8,
    disaggregated, autoscaling), so a flag added there without updating the list fails here.
    """
    configs = [
        load_stack("llama31-405b-v6e16"),  # int8, no tokenizer_path
        load_stack("llama2-70b-disagg"),  # disaggregated, tokenizer_path
        variant_config("dev", autoscaling={"enabled": True}),  # prometheus_port
    ]
    emitted = set().union(*(_generated_maxtext_keys(c) for c in configs))
    assert emitted == set(config_rules.GENERATED_MAXTEXT_KEYS) | set(config_rules.AUTOSCALING_MAXTEXT_KEYS)
    assert not set(config_rules.GENERATED_MAXTEXT_KEYS) & set(config_rules.AUTOSCALING_MAXTEXT_KEYS)
