"""Pure functions: validated StackConfig -> Kubernetes objects (plain dicts).

No Pulumi imports, so `render` prints exactly what `pulumi up` applies. The LeaderWorkerSet and
Service follow `../shared/reference/seed-*.yaml` field for field; the deliberate differences are
listed (and tested) in tests/components/test_conformance.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from components import catalog
from components.config import PROJECT, FlagValue, StackConfig

Obj = dict[str, Any]

# Pulumi await annotations: wait for the LWS `Available` condition (checkpoint restore included).
WAIT_FOR_ANNOTATION = "pulumi.com/waitFor"
TIMEOUT_ANNOTATION = "pulumi.com/timeoutSeconds"
SKIP_AWAIT_ANNOTATION = "pulumi.com/skipAwait"
WORKLOAD_IDENTITY_ANNOTATION = "iam.gke.io/gcp-service-account"
# Seconds the kubelet waits after SIGTERM beyond our server's drain deadline: uvicorn's shutdown,
# process exit and the other leader containers' own SIGTERM handling.
DRAIN_GRACE_MARGIN_SECONDS = 30


def _bool(value: bool) -> str:
    return "true" if value else "false"


def gib_quantity(n_bytes: int) -> str:
    """Bytes as a Kubernetes quantity in whole GiB, rounded up."""
    return f"{-(-n_bytes // catalog.GIB)}Gi"


def flag_value(value: FlagValue) -> str:
    """A flag or env value as text: booleans as MaxText's `true`/`false`, numbers as written."""
    return _bool(value) if isinstance(value, bool) else str(value)


def labels(c: StackConfig, component: str) -> dict[str, str]:
    """Recommended labels on every object we create (not on pod templates: selectors stay as published)."""
    return {
        "app.kubernetes.io/name": c.serving.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PROJECT,
        "app.kubernetes.io/managed-by": "pulumi",
        "app.kubernetes.io/instance": c.stack,
    }


def _metadata(c: StackConfig, name: str, component: str, annotations: dict[str, str] | None = None) -> Obj:
    meta: Obj = {"name": name, "namespace": c.serving.namespace, "labels": labels(c, component)}
    if annotations:
        meta["annotations"] = annotations
    return meta


def metrics_port(c: StackConfig) -> int:
    """Where the leader's model server exports Prometheus metrics (our server: its HTTP port)."""
    return catalog.HTTP_PORT if c.serving.engine == "inference-app" else catalog.JETSTREAM_METRICS_PORT


def leader_pod_labels(c: StackConfig) -> dict[str, str]:
    """Labels every leader pod carries: ours (the guide's `app`) plus the index LWS gives the leader."""
    return {"app": c.serving.name, catalog.LWS_WORKER_INDEX_LABEL: "0"}


def service_endpoint(c: StackConfig) -> str:
    """In-cluster URL of the model server."""
    return f"http://{c.serving.service_name}.{c.serving.namespace}.svc:{catalog.HTTP_PORT}"


# ------------------------------------------------------------------------------ leader containers


def maxtext_args(c: StackConfig) -> list[str]:
    """JetStream/MaxText flags from the typed config (MaxText reads key=value pairs; order is free)."""
    s, m = c.serving, c.model
    spec = c.model_spec
    args = [s.maxtext_config, f"model_name={spec.maxtext_name}"]
    if m.tokenizer_path is not None:
        args.append(f"tokenizer_path={m.tokenizer_path}")
    args += [
        f"load_parameters_path={m.checkpoint}",
        f"max_prefill_predict_length={s.max_prefill_predict_length}",
        f"max_target_length={s.max_target_length}",
        f"ici_fsdp_parallelism={s.parallelism.fsdp}",
        f"ici_autoregressive_parallelism={s.parallelism.autoregressive}",
        f"ici_tensor_parallelism={s.parallelism.tensor}",
        "scan_layers=false",
        f"weight_dtype={m.weight_dtype}",
        f"per_device_batch_size={s.per_device_batch_size}",
    ]
    if m.quantization != "none":
        args.append(f"quantization={m.quantization}")
    args += [
        f"quantize_kvcache={_bool(m.quantize_kvcache)}",
        f"checkpoint_is_quantized={_bool(m.checkpoint_is_quantized)}",
        f"enable_model_warmup={_bool(s.enable_model_warmup)}",
    ]
    if s.mode == "disaggregated":
        args.append(f"inference_server={catalog.MAXTEXT_DISAGGREGATED_SERVER}")
    if c.autoscaling.enabled:
        # Deliberate difference from the reference, only with autoscaling: JetStream exports its
        # metrics (the HPA's jetstream_prefill_backlog_size) only when given a Prometheus port.
        args.append(f"prometheus_port={catalog.JETSTREAM_METRICS_PORT}")
    args += [f"{k}={flag_value(v)}" for k, v in s.maxtext_extra_args.items()]
    return args


def inference_app_command(c: StackConfig) -> list[str]:
    """Our server as the leader's model container, talking to Pathways through the proxy.

    A MaxText checkpoint holds only arrays: `--model` names its architecture (the MaxText model
    name, which the server's catalog uses too) and `--tokenizer-path` its tokenizer.
    """
    s, m = c.serving, c.model
    fsdp, ar, tensor = c.parallelism
    source = ["--model-path", m.checkpoint]
    if c.app_restores_maxtext:
        assert c.model_spec.maxtext_name is not None and m.hf_tokenizer_path is not None  # validated
        source += ["--model", c.model_spec.maxtext_name, "--tokenizer-path", m.hf_tokenizer_path]
    return [
        "python", "-m", "inference_app", "serve",
        "--host", "0.0.0.0",
        "--port", str(catalog.HTTP_PORT),
        *source,
        "--mode", s.mode,
        "--max-slots", str(c.slots_per_engine),
        "--max-prefill-length", str(s.max_prefill_predict_length),
        "--max-target-length", str(s.max_target_length),
        "--ici-fsdp-parallelism", str(fsdp),
        "--ici-autoregressive-parallelism", str(ar),
        "--ici-tensor-parallelism", str(tensor),
        "--weight-dtype", "int8" if m.quantization == "int8" else m.weight_dtype,
        "--kv-dtype", "int8" if m.quantize_kvcache else m.weight_dtype,
        "--drain-timeout", str(s.drain_timeout_seconds),
        "--pathways",
    ]  # fmt: skip


def _probes(c: StackConfig) -> Obj:
    def get() -> Obj:
        return {"path": catalog.HEALTH_PATH, "port": catalog.HTTP_PORT, "scheme": "HTTP"}

    p = c.serving.probes
    return {
        "startupProbe": {
            "httpGet": get(),
            "periodSeconds": 1,
            "initialDelaySeconds": p.startup_initial_delay_seconds,
            "failureThreshold": 10000,
        },
        "livenessProbe": {"httpGet": get(), "periodSeconds": 60, "failureThreshold": p.failure_threshold},
        "readinessProbe": {"httpGet": get(), "periodSeconds": 60, "failureThreshold": p.failure_threshold},
    }


def _env(values: Mapping[str, FlagValue]) -> list[Obj]:
    return [{"name": k, "value": flag_value(v)} for k, v in values.items()]


def inference_app_env(c: StackConfig, *, maxtext: bool) -> dict[str, str]:
    """The inference-app container's environment (`serving.model_server_env` may override it).

    With a MaxText checkpoint (`maxtext`), `ENABLE_PATHWAYS_PERSISTENCE=1` lets the TPU workers
    read their shards from GCS themselves (pathwaysutils' Orbax handler) instead of through this
    container.
    """
    env: dict[str, FlagValue] = {
        "JAX_PLATFORMS": "proxy",
        "JAX_BACKEND_TARGET": f"grpc://localhost:{catalog.PROXY_PORT}",
    }
    if maxtext:
        env[catalog.PATHWAYS_PERSISTENCE_ENV] = "1"
    env.update(c.serving.model_server_env)
    return {k: flag_value(v) for k, v in env.items()}


def _model_containers(c: StackConfig) -> list[Obj]:
    if c.serving.engine == "inference-app":
        app: Obj = {
            "name": "inference-app",
            "image": c.images.inference_app,
            "command": inference_app_command(c),
            "env": _env(inference_app_env(c, maxtext=c.app_restores_maxtext)),
            "imagePullPolicy": "IfNotPresent",
            "ports": [{"containerPort": catalog.HTTP_PORT}],
            # Streaming loads hold a few shards, never the model (catalog.MODEL_SERVER_STREAM_UNITS).
            "resources": {"requests": {"memory": gib_quantity(c.model_server_memory_request_bytes)}},
            **_probes(c),
        }
        return [app]
    jax: Obj = {"name": "jax-tpu", "image": c.images.jetstream_maxtext, "args": maxtext_args(c)}
    if c.serving.model_server_env:
        jax["env"] = _env(c.serving.model_server_env)
    jax["imagePullPolicy"] = "Always"
    if c.serving.mode == "disaggregated":
        jax["securityContext"] = {"capabilities": {"add": list(catalog.DISAGGREGATED_CAPABILITIES)}}
    jax["ports"] = [{"containerPort": catalog.JETSTREAM_PORT}]
    if c.autoscaling.enabled:  # the exporter started by prometheus_port= (see maxtext_args)
        jax["ports"].append({"containerPort": catalog.JETSTREAM_METRICS_PORT})
    jax.update(_probes(c))
    http: Obj = {
        "name": "jetstream-http",
        "image": c.images.jetstream_http,
        "imagePullPolicy": "Always",
        "ports": [{"containerPort": catalog.HTTP_PORT}],
    }
    return [jax, http]


def _leader_containers(c: StackConfig) -> list[Obj]:
    rm_address = f"--resource_manager_address=$(LWS_LEADER_ADDRESS):{catalog.RESOURCE_MANAGER_PORT}"
    scratch = f"--gcs_scratch_location={c.scratch_location}"
    proxy: Obj = {
        "name": "pathways-proxy",
        "image": c.pathways_proxy_image,
        "args": [rm_address, f"--server_port={catalog.PROXY_PORT}", scratch],
        "imagePullPolicy": "Always",
        "ports": [{"containerPort": catalog.PROXY_PORT}],
    }
    rm: Obj = {
        "name": "pathways-rm",
        "env": _env({"HOST_ADDRESS": "$(LWS_LEADER_ADDRESS)", "TPU_SKIP_MDS_QUERY": "true"}),
        "image": c.pathways_server_image,
        "args": [
            f"--server_port={catalog.RESOURCE_MANAGER_PORT}",
            scratch,
            "--node_type=resource_manager",
            f"--instance_count={c.slices_per_replica}",
            f"--instance_type={c.generation.pathways_instance_prefix}:{c.tpu.topology}",
            *c.serving.pathways_rm_extra_args,
        ],
        "imagePullPolicy": "Always",
        "ports": [{"containerPort": catalog.RESOURCE_MANAGER_PORT}],
    }
    return [proxy, rm, *_model_containers(c)]


def _tpu_pod_scheduling(c: StackConfig) -> Obj:
    return {
        "nodeSelector": {
            catalog.ACCELERATOR_LABEL: c.generation.node_label,
            catalog.TOPOLOGY_LABEL: c.tpu.topology,
        },
        "tolerations": [{"key": catalog.TPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
    }


# --------------------------------------------------------------------------------- the workload


def leader_worker_set(c: StackConfig) -> Obj:
    """The Pathways group: leader (rm + proxy + model server) and one worker per TPU VM."""
    disaggregated = c.serving.mode == "disaggregated"
    topology_key = (
        "leaderworkerset.sigs.k8s.io/subgroup-exclusive-topology"
        if disaggregated
        else "leaderworkerset.sigs.k8s.io/exclusive-topology"
    )
    annotations = {
        topology_key: catalog.NODEPOOL_LABEL,
        WAIT_FOR_ANNOTATION: "condition=Available",
        TIMEOUT_ANNOTATION: str(c.serving.ready_timeout_seconds),
    }
    worker = {
        "name": "worker",
        "args": [
            f"--server_port={catalog.WORKER_PORT}",
            f"--resource_manager_address=$(LWS_LEADER_ADDRESS):{catalog.RESOURCE_MANAGER_PORT}",
            f"--gcs_scratch_location={c.scratch_location}",
        ],
        "image": c.pathways_server_image,
        "imagePullPolicy": "Always",
        "ports": [{"containerPort": catalog.WORKER_PORT}],
        "resources": {"limits": {catalog.TPU_RESOURCE: str(c.chips_per_vm)}},
    }
    template: Obj = {}
    if disaggregated:
        template["subGroupPolicy"] = {"subGroupSize": c.vms_per_slice}
    leader_spec: Obj = {**_tpu_pod_scheduling(c), "containers": _leader_containers(c)}
    if c.serving.engine == "inference-app":
        # Our server drains on SIGTERM for up to drain_timeout_seconds; Kubernetes' default grace
        # (30 s) would SIGKILL it mid-drain. JetStream has no drain, so its renders stay exactly
        # the reference's (no grace-period field).
        leader_spec["terminationGracePeriodSeconds"] = (
            c.serving.drain_timeout_seconds + DRAIN_GRACE_MARGIN_SECONDS
        )
    template["leaderTemplate"] = {"metadata": {"labels": {"app": c.serving.name}}, "spec": leader_spec}
    template["size"] = c.lws_size
    template["workerTemplate"] = {"spec": {**_tpu_pod_scheduling(c), "containers": [worker]}}
    return {
        "apiVersion": catalog.LWS_API_VERSION,
        "kind": "LeaderWorkerSet",
        "metadata": _metadata(c, c.serving.name, "model-server", annotations),
        "spec": {"replicas": c.initial_replicas, "leaderWorkerTemplate": template},
    }


def service(c: StackConfig) -> Obj:
    """ClusterIP only (as in the guide): reach it with port-forward or from inside the cluster."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(c, c.serving.service_name, "model-server"),
        "spec": {
            "selector": {"app": c.serving.name},
            "ports": [
                {
                    "protocol": "TCP",
                    "name": "jetstream-http",
                    "port": catalog.HTTP_PORT,
                    "targetPort": catalog.HTTP_PORT,
                }
            ],
        },
    }


def namespace(c: StackConfig) -> Obj | None:
    if c.serving.namespace == "default":
        return None
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": c.serving.namespace, "labels": labels(c, "namespace")},
    }


def horizontal_pod_autoscaler(c: StackConfig) -> Obj | None:
    """Scales whole LWS groups through the LWS scale subresource on a serving metric."""
    a = c.autoscaling
    if not a.enabled:
        return None
    target = {"type": "AverageValue", "averageValue": a.target_average_value}
    source_key = "pods" if a.metric_type == "Pods" else "external"
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(c, c.serving.name, "autoscaler"),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": catalog.LWS_API_VERSION,
                "kind": "LeaderWorkerSet",
                "name": c.serving.name,
            },
            "minReplicas": a.min_replicas,
            "maxReplicas": a.max_replicas,
            "metrics": [
                {
                    "type": a.metric_type,
                    source_key: {"metric": {"name": c.autoscaling_metric_name}, "target": target},
                }
            ],
        },
    }


def pod_monitoring(c: StackConfig) -> Obj | None:
    """The HPA's metric source: Managed Service for Prometheus scrapes each group's leader.

    The samples land in Cloud Monitoring as `prometheus.googleapis.com|<metric>|gauge`, which the
    Custom Metrics Stackdriver Adapter serves to the HPA as a per-pod metric. Workers run no
    server, so only leaders (worker index 0) are selected.
    """
    if not c.autoscaling.enabled:
        return None
    return {
        "apiVersion": catalog.POD_MONITORING_API_VERSION,
        "kind": "PodMonitoring",
        "metadata": _metadata(c, c.serving.name, "metrics"),
        "spec": {
            "selector": {"matchLabels": leader_pod_labels(c)},
            "endpoints": [
                {
                    "port": metrics_port(c),
                    "path": catalog.METRICS_PATH,
                    "interval": catalog.METRICS_SCRAPE_INTERVAL,
                }
            ],
        },
    }


def batch_service_account(c: StackConfig) -> Obj | None:
    """Kubernetes SA of the batch Job, mapped by Workload Identity to its GCP service account."""
    if not c.batch_job.enabled:
        return None
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(
            c, c.batch_job.name, "batch", {WORKLOAD_IDENTITY_ANNOTATION: c.batch_service_account_email}
        ),
    }


def batch_command(c: StackConfig) -> list[str]:
    b = c.batch_job
    assert b.input is not None and b.output is not None  # validated
    return [
        "python", "-m", "inference_app", "batch",
        "--input", b.input,
        "--output", b.output,
        "--endpoint", service_endpoint(c),
        "--concurrency", str(b.concurrency),
        "--max-tokens", str(b.max_tokens),
    ]  # fmt: skip


def batch_job(c: StackConfig) -> Obj | None:
    """A resumable batch run against the in-cluster Service; Pulumi does not wait for it to finish."""
    b = c.batch_job
    if not b.enabled:
        return None
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(c, b.name, "batch", {SKIP_AWAIT_ANNOTATION: "true"}),
        "spec": {
            "backoffLimit": b.backoff_limit,
            "template": {
                "metadata": {"labels": {"app": b.name}},
                "spec": {
                    "serviceAccountName": b.name,
                    "restartPolicy": "Never",
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
                    "containers": [
                        {
                            "name": "batch",
                            "image": c.images.inference_app,
                            "command": batch_command(c),
                            "imagePullPolicy": "IfNotPresent",
                            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                },
            },
        },
    }


def workload_objects(c: StackConfig) -> list[Obj]:
    """Every Kubernetes object of the stack except the LWS controller, in apply order."""
    candidates = [
        namespace(c),
        leader_worker_set(c),
        service(c),
        pod_monitoring(c),
        horizontal_pod_autoscaler(c),
        batch_service_account(c),
        batch_job(c),
    ]
    return [o for o in candidates if o is not None]
