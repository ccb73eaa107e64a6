"""The stack's typed configuration: frozen Pydantic models plus every cross-field rule.

Read once (from Pulumi config in `__main__.py`, or from a stack file by `render`/`preview`) and
validated before any resource is registered. Unknown keys are errors, and every error names the
field and the fix. Derived facts (VMs, LWS size, slots, memory estimate) are properties, never
fields a user could set inconsistently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components import catalog

PROJECT: Final = "tpu-pathways-inference"  # Pulumi project name = our config namespace
PROJECT_PLACEHOLDER: Final = "your-gcp-project-id"

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
_PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_ZONE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
_GKE_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?(?:-gke\.(\d+))?$")
_LWS_VERSION = re.compile(r"^v(\d+)\.(\d+)\.(\d+)$")
_IMAGE = re.compile(
    r"^[a-z0-9.-]+(?::\d+)?(?:/[a-z0-9._-]+)+(?::[A-Za-z0-9_][A-Za-z0-9._-]{0,127}|@sha256:[0-9a-f]{64})$"
)


class ConfigError(ValueError):
    """Invalid stack configuration; the message lists every problem as `field: problem (fix)`."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


_M = TypeVar("_M", bound=_Model)


def _defaults(cls: type[_M]) -> _M:
    """A section with every default (typed for mypy, which has no Pydantic plugin here)."""
    return cls.model_validate({})


def gcs_path_problem(path: str) -> str | None:
    """Why `path` is not a well-formed `gs://bucket/object-prefix`, or None if it is."""
    if not path.startswith("gs://"):
        return f"{path!r} must start with gs://"
    bucket, _, rest = path[len("gs://") :].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        return (
            f"bucket {bucket!r} is not a valid GCS bucket name (3-63 chars: lowercase letters, digits, - _ .)"
        )
    if not rest or rest.startswith("/") or "//" in rest:
        return f"{path!r} needs an object path after the bucket (gs://bucket/path, no empty segments)"
    return None


def gcs_bucket(path: str) -> str:
    return path[len("gs://") :].split("/", 1)[0]


def image_problem(image: str) -> str | None:
    """Why an image reference is unsafe to deploy (unpinned, :latest, malformed), or None."""
    if not _IMAGE.match(image):
        return f"{image!r} must be registry/path:tag or registry/path@sha256:digest"
    if image.rpartition(":")[2] == "latest":
        return f"{image!r} uses :latest; pin a version tag or digest"
    return None


def _gke_version_key(version: str) -> tuple[int, ...] | None:
    """Sortable key; missing parts of a prefix ('1.31') sort last, as GKE resolves it to the newest."""
    m = _GKE_VERSION.match(version)
    if not m:
        return None
    big = 10**12
    return tuple(int(g) if g is not None else big for g in m.groups())


# ------------------------------------------------------------------------------------- sections


class SystemPoolConfig(_Model):
    """CPU pool for the LWS controller, kube-system and the batch Job."""

    machine_type: str = Field("e2-standard-4", description="GCE machine type of the CPU system pool.")
    node_count: int = Field(1, ge=1, le=10, description="Nodes in the system pool.")


class ClusterConfig(_Model):
    create: bool = Field(True, description="Create the GKE cluster; false deploys into an existing cluster.")
    name: str = Field("pathways-inference", description="GKE cluster name (DNS label, at most 40 chars).")
    zone: str = Field(
        ..., description="Zone of the cluster and its TPU pools; must offer the TPU generation."
    )
    release_channel: Literal["RAPID", "REGULAR", "STABLE"] = Field(
        "REGULAR", description="GKE release channel."
    )
    min_master_version: str | None = Field(
        None,
        description="Minimum GKE version; defaults to the TPU generation's minimum (v6e: 1.31.2-gke.1115000).",
    )
    deletion_protection: bool = Field(
        True, description="GKE deletion protection; must be true in production."
    )
    system_pool: SystemPoolConfig = Field(
        default_factory=lambda: _defaults(SystemPoolConfig), description="The CPU system pool."
    )
    kubeconfig_path: str | None = Field(
        None,
        description="Existing cluster only: kubeconfig file (default: the provider's ambient kubeconfig).",
    )
    context: str | None = Field(
        None, description="Existing cluster only: kubeconfig context (required then)."
    )
    node_service_account: str | None = Field(
        None,
        description="Existing cluster only: e-mail of the TPU nodes' service account to grant bucket access.",
    )


class TpuConfig(_Model):
    generation: Literal["v5e", "v5p", "v6e"] = Field(..., description="TPU generation (catalog key).")
    topology: str = Field(..., description="Slice topology, e.g. 4x4 (v6e/v5e) or 2x2x2 (v5p).")
    machine_type: str = Field(
        ..., description="TPU machine type, e.g. ct6e-standard-4t; fixes VMs per slice."
    )
    capacity: Literal["on-demand", "spot", "reservation", "flex-start"] = Field(
        "on-demand", description="How TPU VMs are obtained."
    )
    reservation: str | None = Field(
        None, description="Reservation name; required iff capacity is reservation."
    )
    allow_unlisted_zone: bool = Field(
        False, description="Accept a zone the catalog does not list for the generation."
    )


class ModelConfig(_Model):
    name: str = Field(..., description="Model catalog key, e.g. llama3.1-405b.")
    checkpoint: str = Field(..., description="gs:// path of the checkpoint (MaxText format for JetStream).")
    weight_dtype: Literal["bfloat16", "float32"] = Field("bfloat16", description="Compute/weight dtype.")
    quantization: Literal["none", "int8"] = Field("none", description="Weight quantization.")
    quantize_kvcache: bool = Field(False, description="int8 KV cache.")
    checkpoint_is_quantized: bool = Field(False, description="The checkpoint is already int8.")
    tokenizer_path: str | None = Field(
        None, description="MaxText tokenizer_path= flag; omitted when unset (the MaxText config's default)."
    )


class ParallelismConfig(_Model):
    fsdp: int = Field(1, description="ici_fsdp_parallelism (-1: fill).")
    autoregressive: int = Field(1, description="ici_autoregressive_parallelism (-1: fill).")
    tensor: int = Field(-1, description="ici_tensor_parallelism (-1: fill).")


class ProbeConfig(_Model):
    startup_initial_delay_seconds: int = Field(
        900, ge=0, description="Startup probe delay (checkpoint restore)."
    )
    failure_threshold: int = Field(
        10, ge=1, description="Liveness/readiness failure threshold (60 s period)."
    )


class ServingConfig(_Model):
    engine: Literal["jetstream-maxtext", "inference-app"] = Field(
        "jetstream-maxtext",
        description="Leader model container: Google's JetStream/MaxText or our inference_app.",
    )
    mode: Literal["interleaved", "disaggregated"] = Field(
        "interleaved",
        description="interleaved: 1 slice per replica; disaggregated: 2 equal slices (prefill, generate).",
    )
    namespace: str = Field("default", description="Kubernetes namespace (created unless default).")
    name: str = Field("jetstream-pathways", description="LeaderWorkerSet name and `app` label.")
    service_name: str = Field("jetstream-svc", description="ClusterIP Service name.")
    replicas: int = Field(
        1, ge=1, le=16, description="LWS replicas (groups); with autoscaling use its bounds."
    )
    max_prefill_predict_length: int = Field(1024, ge=1, description="Longest prompt (tokens).")
    max_target_length: int = Field(
        2048, ge=2, description="Prompt + generated tokens; > max_prefill_predict_length."
    )
    per_device_batch_size: int = Field(
        1, ge=1, description="Slots per chip; slots per engine = this x chips."
    )
    parallelism: ParallelismConfig = Field(
        default_factory=lambda: _defaults(ParallelismConfig), description="ICI parallelism."
    )
    enable_model_warmup: bool = Field(True, description="Compile/warm up before reporting healthy.")
    maxtext_config: str = Field(
        "MaxText/configs/base.yml", description="MaxText config file (first argument)."
    )
    maxtext_extra_args: dict[str, str] = Field(
        default_factory=dict,
        description="Extra MaxText key=value flags, in order; may not repeat generated keys.",
    )
    pathways_rm_extra_args: list[str] = Field(
        default_factory=list, description="Extra flags for the Pathways resource manager."
    )
    model_server_env: dict[str, str] = Field(dict(), description="Extra env for the model container.")
    probes: ProbeConfig = Field(
        default_factory=lambda: _defaults(ProbeConfig), description="Health-probe timing."
    )
    ready_timeout_seconds: int = Field(
        3600, ge=60, description="How long `pulumi up` waits for LWS Available; > startup delay."
    )
    drain_timeout_seconds: int = Field(
        120,
        ge=1,
        le=3600,
        description="inference-app only: SIGTERM drain (`serve --drain-timeout`); the leader's grace "
        "period is this plus a margin.",
    )


class ImagesConfig(_Model):
    pathways_server: str = Field(catalog.PATHWAYS_SERVER_IMAGE, description="Pathways server (rm + workers).")
    pathways_proxy: str = Field(catalog.PATHWAYS_PROXY_IMAGE, description="Pathways proxy.")
    jetstream_maxtext: str = Field(catalog.JETSTREAM_MAXTEXT_IMAGE, description="JetStream MaxText server.")
    jetstream_http: str = Field(catalog.JETSTREAM_HTTP_IMAGE, description="JetStream HTTP front end.")
    inference_app: str | None = Field(
        None,
        description="Our server's image (pinned tag/digest); required for engine inference-app or batch_job.",
    )


class LwsConfig(_Model):
    install: bool = Field(True, description="Install the LWS controller (false: the cluster already has it).")
    version: str = Field(
        catalog.LWS_DEFAULT_VERSION, description="LWS release, vX.Y.Z (the guide used v0.4.0)."
    )


class StorageConfig(_Model):
    scratch_bucket: str | None = Field(
        None, description="Pathways scratch bucket name; default <project>-<stack>-pathways."
    )
    force_destroy: bool = Field(False, description="Let `pulumi destroy` delete a non-empty scratch bucket.")
    scratch_retention_days: int = Field(
        7, ge=1, description="Scratch objects are deleted after this many days."
    )


class AutoscalingConfig(_Model):
    enabled: bool = Field(False, description="Create an HPA on the LeaderWorkerSet's scale subresource.")
    min_replicas: int = Field(
        1, ge=1, description="HPA minReplicas (slices for these are always provisioned)."
    )
    max_replicas: int = Field(
        2, ge=1, le=16, description="HPA maxReplicas (TPU pools beyond min scale from 0)."
    )
    metric_type: Literal["Pods", "External"] = Field("Pods", description="HPA metric source type.")
    metric_name: str | None = Field(
        None,
        description="Serving metric (via a custom/external metrics adapter); default per engine: "
        "jetstream_prefill_backlog_size (JetStream) or inference_queue_depth (inference-app).",
    )
    target_average_value: str = Field("10", description="Target average value (Kubernetes quantity).")


class BatchJobConfig(_Model):
    enabled: bool = Field(False, description="Create a Kubernetes Job that runs `inference_app batch`.")
    name: str = Field("batch-inference", description="Job name.")
    input: str | None = Field(None, description="gs:// JSONL of prompts; required when enabled.")
    output: str | None = Field(None, description="gs:// JSONL results (resumable); required when enabled.")
    concurrency: int = Field(8, ge=1, le=1024, description="Concurrent requests.")
    max_tokens: int = Field(256, ge=1, description="Tokens generated per prompt.")
    backoff_limit: int = Field(3, ge=0, description="Job retries (the batch client resumes).")


_SECTIONS: Final[dict[str, type[_Model]]] = {
    "cluster": ClusterConfig,
    "tpu": TpuConfig,
    "model": ModelConfig,
    "serving": ServingConfig,
    "images": ImagesConfig,
    "lws": LwsConfig,
    "storage": StorageConfig,
    "autoscaling": AutoscalingConfig,
    "batch_job": BatchJobConfig,
}


class StackConfig(_Model):
    """Everything one stack deploys. Built by `parse_stack_config`; all rules checked at construction."""

    project: str = Field(..., description="GCP project id (`gcp:project`).")
    stack: str = Field(..., description="Pulumi stack name.")
    environment: Literal["production", "development"] = Field(
        "production", description="production enforces deletion protection."
    )
    cluster: ClusterConfig
    tpu: TpuConfig
    model: ModelConfig
    serving: ServingConfig = Field(default_factory=lambda: _defaults(ServingConfig))
    images: ImagesConfig = Field(default_factory=lambda: _defaults(ImagesConfig))
    lws: LwsConfig = Field(default_factory=lambda: _defaults(LwsConfig))
    storage: StorageConfig = Field(default_factory=lambda: _defaults(StorageConfig))
    autoscaling: AutoscalingConfig = Field(default_factory=lambda: _defaults(AutoscalingConfig))
    batch_job: BatchJobConfig = Field(default_factory=lambda: _defaults(BatchJobConfig))

    # ----------------------------------------------------------------------- derived facts

    @property
    def generation(self) -> catalog.TpuGeneration:
        return catalog.TPU_GENERATIONS[self.tpu.generation]

    @property
    def model_spec(self) -> catalog.ModelSpec:
        return catalog.MODELS[self.model.name]

    @property
    def region(self) -> str:
        return self.generation.region_of(self.cluster.zone)

    @property
    def chips_per_vm(self) -> int:
        mt = self.generation.machine_type(self.tpu.machine_type)
        assert mt is not None  # validated
        return mt.chips_per_vm

    @property
    def vms_per_slice(self) -> int:
        return self.generation.topologies[self.tpu.topology][self.tpu.machine_type]

    @property
    def chips_per_slice(self) -> int:
        return self.generation.chips(self.tpu.topology)

    @property
    def multi_host(self) -> bool:
        return self.vms_per_slice > 1

    @property
    def slices_per_replica(self) -> int:
        """One slice per engine: interleaved has one engine, disaggregated a prefill and a generate."""
        return 2 if self.serving.mode == "disaggregated" else 1

    @property
    def lws_size(self) -> int:
        """Pods per LWS group: one Pathways worker per TPU VM, plus the leader."""
        return self.slices_per_replica * self.vms_per_slice + 1

    @property
    def initial_replicas(self) -> int:
        return self.autoscaling.min_replicas if self.autoscaling.enabled else self.serving.replicas

    @property
    def provisioned_replicas(self) -> int:
        """Replicas that get TPU node pools (autoscaling: up to max, the extra pools scale from 0)."""
        return self.autoscaling.max_replicas if self.autoscaling.enabled else self.serving.replicas

    @property
    def slice_count(self) -> int:
        return self.slices_per_replica * self.provisioned_replicas

    @property
    def always_on_slices(self) -> int:
        return self.slices_per_replica * self.initial_replicas

    @property
    def parallelism(self) -> tuple[int, int, int]:
        """(fsdp, autoregressive, tensor) with the -1 filled so the product is the engine's chips."""
        values = [
            self.serving.parallelism.fsdp,
            self.serving.parallelism.autoregressive,
            self.serving.parallelism.tensor,
        ]
        fixed = 1
        for v in values:
            if v != -1:
                fixed *= v
        resolved = [self.chips_per_slice // fixed if v == -1 else v for v in values]
        return resolved[0], resolved[1], resolved[2]

    @property
    def slots_per_engine(self) -> int:
        return self.serving.per_device_batch_size * self.chips_per_slice

    @property
    def weight_dtype_bytes(self) -> int:
        return 1 if self.model.quantization == "int8" else catalog.DTYPE_BYTES[self.model.weight_dtype]

    @property
    def kv_dtype_bytes(self) -> int:
        return 1 if self.model.quantize_kvcache else catalog.DTYPE_BYTES[self.model.weight_dtype]

    @property
    def memory_estimate_bytes(self) -> tuple[int, int]:
        """(needed, usable) HBM bytes per engine slice: weights + KV cache for every slot."""
        spec = self.model_spec
        weights = spec.params * self.weight_dtype_bytes
        kv = (
            spec.kv_bytes_per_token(self.kv_dtype_bytes)
            * self.serving.max_target_length
            * self.slots_per_engine
        )
        usable = int(self.chips_per_slice * self.generation.hbm_bytes_per_chip * catalog.HBM_USABLE_FRACTION)
        return weights + kv, usable

    @property
    def autoscaling_metric_name(self) -> str:
        return self.autoscaling.metric_name or catalog.AUTOSCALING_METRICS[self.serving.engine]

    @property
    def scratch_bucket(self) -> str:
        return self.storage.scratch_bucket or f"{self.project}-{self.stack}-pathways"

    @property
    def scratch_location(self) -> str:
        return f"gs://{self.scratch_bucket}/tmp"

    @property
    def min_master_version(self) -> str:
        return self.cluster.min_master_version or self.generation.min_gke_version

    def service_account_id(self, role: str) -> str:
        """GCP service-account id `<stack>-<role>`, the stack cut so the id fits 30 characters."""
        return f"{self.stack[: 29 - len(role)].rstrip('-')}-{role}"

    @property
    def batch_service_account_id(self) -> str:
        """The batch Job's GCP service account (Workload Identity)."""
        return self.service_account_id("batch-job")

    @property
    def batch_service_account_email(self) -> str:
        return f"{self.batch_service_account_id}@{self.project}.iam.gserviceaccount.com"

    # ----------------------------------------------------------------------- cross-field rules

    @model_validator(mode="after")
    def _check(self) -> StackConfig:
        problems = list(_problems(self))
        if problems:
            raise ValueError("\n".join(problems))
        return self


def _problems(c: StackConfig) -> list[str]:
    """Every rule violated by `c`, each as `field: what is wrong (how to fix)`."""
    out: list[str] = []
    gen = c.generation
    t = c.tpu

    if not _PROJECT_ID.match(c.project):
        out.append(
            f"gcp:project: {c.project!r} is not a GCP project id (set it: pulumi config set gcp:project <id>)"
        )
    if not _DNS_LABEL.match(c.stack) or len(c.stack) > 40:
        out.append(f"stack: {c.stack!r} must be a lowercase DNS label of at most 40 characters")

    # --- cluster
    if not _DNS_LABEL.match(c.cluster.name) or len(c.cluster.name) > 40:
        out.append(
            f"cluster.name: {c.cluster.name!r} must be lowercase letters, digits and '-', at most 40 chars"
        )
    if not _ZONE.match(c.cluster.zone):
        out.append(f"cluster.zone: {c.cluster.zone!r} is not a zone (e.g. us-east5-b)")
    elif c.cluster.zone not in gen.zones and not t.allow_unlisted_zone:
        out.append(
            f"cluster.zone: {gen.name} is not known in {c.cluster.zone}; use one of {', '.join(gen.zones)} "
            "(or set tpu.allow_unlisted_zone: true if Google now offers it there)"
        )
    if c.cluster.min_master_version is not None:
        wanted = _gke_version_key(c.cluster.min_master_version)
        minimum = _gke_version_key(gen.min_gke_version)
        if wanted is None:
            out.append(
                f"cluster.min_master_version: {c.cluster.min_master_version!r} is not a GKE version like 1.31.2-gke.1115000"
            )
        elif minimum is not None and wanted < minimum:
            out.append(
                f"cluster.min_master_version: TPU {gen.name} needs GKE >= {gen.min_gke_version}; "
                f"{c.cluster.min_master_version} is older (raise it or leave it unset)"
            )
    if c.environment == "production" and not c.cluster.deletion_protection:
        out.append(
            "cluster.deletion_protection: must be true in production (or set environment: development)"
        )
    existing_only = {
        "kubeconfig_path": c.cluster.kubeconfig_path,
        "context": c.cluster.context,
        "node_service_account": c.cluster.node_service_account,
    }
    if c.cluster.create:
        for key, value in existing_only.items():
            if value is not None:
                out.append(
                    f"cluster.{key}: only for an existing cluster (set cluster.create: false or remove it)"
                )
    elif not c.cluster.context:
        out.append(
            "cluster.context: required with cluster.create: false (the kubeconfig context to deploy into)"
        )

    # --- TPU shape
    mt = gen.machine_type(t.machine_type)
    if mt is None:
        names = ", ".join(m.name for m in gen.machine_types)
        out.append(
            f"tpu.machine_type: {t.machine_type!r} is not a {gen.name} machine type; use one of {names}"
        )
    elif t.topology not in gen.topologies:
        out.append(
            f"tpu.topology: {t.topology!r} is not a {gen.name} topology; use one of {', '.join(gen.topologies)}"
        )
    elif t.machine_type not in gen.topologies[t.topology]:
        fits = ", ".join(gen.topologies[t.topology])
        out.append(
            f"tpu.topology: {t.topology} is not offered on {t.machine_type}; with {t.topology} use {fits}"
        )
    if t.capacity == "reservation" and not t.reservation:
        out.append("tpu.reservation: required when tpu.capacity is reservation (the reservation's name)")
    if t.capacity != "reservation" and t.reservation:
        out.append(f"tpu.reservation: only used with tpu.capacity: reservation (capacity is {t.capacity})")
    shape_ok = (
        mt is not None and t.topology in gen.topologies and t.machine_type in gen.topologies[t.topology]
    )

    # --- model
    spec = catalog.MODELS.get(c.model.name)
    if spec is None:
        out.append(
            f"model.name: {c.model.name!r} is not in the catalog; use one of {', '.join(catalog.MODELS)}"
        )
    elif c.serving.engine == "jetstream-maxtext" and spec.maxtext_name is None:
        out.append(
            f"model.name: {spec.name} is not a MaxText model; set serving.engine: inference-app to serve it"
        )
    if (problem := gcs_path_problem(c.model.checkpoint)) is not None:
        out.append(f"model.checkpoint: {problem}")
    if c.model.checkpoint_is_quantized and c.model.quantization != "int8":
        out.append("model.checkpoint_is_quantized: needs model.quantization: int8")

    # --- serving
    s = c.serving
    for field in ("namespace", "name", "service_name"):
        value = getattr(s, field)
        if not _DNS_LABEL.match(value):
            out.append(f"serving.{field}: {value!r} must be a lowercase DNS label (a-z, 0-9, '-')")
    if s.max_prefill_predict_length >= s.max_target_length:
        out.append(
            f"serving.max_prefill_predict_length: {s.max_prefill_predict_length} must be < serving.max_target_length "
            f"({s.max_target_length}); the target length includes the prompt"
        )
    par = [s.parallelism.fsdp, s.parallelism.autoregressive, s.parallelism.tensor]
    if any(v == 0 or v < -1 for v in par):
        out.append("serving.parallelism: each of fsdp, autoregressive, tensor must be >= 1 or -1 (fill)")
    elif par.count(-1) > 1:
        out.append("serving.parallelism: at most one of fsdp, autoregressive, tensor may be -1")
    elif shape_ok:
        chips = c.chips_per_slice
        fixed = 1
        for v in par:
            fixed *= v if v != -1 else 1
        engine = "each engine's slice" if s.mode == "disaggregated" else "the slice"
        if -1 in par and chips % fixed:
            out.append(
                f"serving.parallelism: {fixed} does not divide the {chips} chips of {engine}; -1 cannot fill it"
            )
        elif -1 not in par and fixed != chips:
            out.append(
                f"serving.parallelism: fsdp x autoregressive x tensor = {fixed}, but {engine} has {chips} chips "
                f"({t.topology}); make the product {chips} or set one of them to -1"
            )
    overlap = set(s.maxtext_extra_args) & set(_GENERATED_MAXTEXT_KEYS)
    if overlap:
        out.append(
            f"serving.maxtext_extra_args: {', '.join(sorted(overlap))} are generated from the typed config; "
            "set the typed field instead"
        )
    if s.engine == "inference-app" and s.maxtext_extra_args:
        out.append("serving.maxtext_extra_args: only used by engine jetstream-maxtext; remove it")
    if s.engine != "inference-app" and "drain_timeout_seconds" in s.model_fields_set:
        out.append(
            "serving.drain_timeout_seconds: only used by engine inference-app (JetStream has no drain flag); remove it"
        )
    if s.ready_timeout_seconds <= s.probes.startup_initial_delay_seconds:
        out.append(
            f"serving.ready_timeout_seconds: {s.ready_timeout_seconds} must exceed "
            f"serving.probes.startup_initial_delay_seconds ({s.probes.startup_initial_delay_seconds})"
        )

    # --- memory fit (weights + KV cache for every slot, per engine slice)
    if shape_ok and spec is not None:
        needed, usable = c.memory_estimate_bytes
        if needed > usable:
            gib = catalog.GIB
            out.append(
                f"serving.per_device_batch_size: {spec.name} needs ~{needed / gib:.0f} GiB per engine "
                f"(weights {spec.params * c.weight_dtype_bytes / gib:.0f} GiB + KV cache for {c.slots_per_engine} "
                f"slots x {s.max_target_length} tokens) but a {gen.name} {t.topology} slice has ~{usable / gib:.0f} GiB "
                "usable HBM; use a larger topology, int8 (model.quantization / quantize_kvcache), fewer slots "
                "or a shorter max_target_length"
            )

    # --- images
    for field in ImagesConfig.model_fields:
        image = getattr(c.images, field)
        if image is not None and (problem := image_problem(image)) is not None:
            out.append(f"images.{field}: {problem}")
    if c.images.inference_app is None:
        if s.engine == "inference-app":
            out.append(
                "images.inference_app: required with serving.engine: inference-app (a pinned image tag)"
            )
        if c.batch_job.enabled:
            out.append(
                "images.inference_app: required with batch_job.enabled (the Job runs inference_app batch)"
            )

    # --- LWS
    m = _LWS_VERSION.match(c.lws.version)
    if not m:
        out.append(f"lws.version: {c.lws.version!r} must look like v0.10.0")
    elif (int(m[1]), int(m[2])) < (0, 4):
        out.append(f"lws.version: {c.lws.version} predates subgroups and the v1 API we use; use >= v0.4.0")

    # --- storage
    if not _BUCKET.match(c.scratch_bucket) or ".." in c.scratch_bucket:
        out.append(
            f"storage.scratch_bucket: {c.scratch_bucket!r} is not a valid bucket name (3-63 chars); set a shorter one"
        )

    # --- autoscaling
    a = c.autoscaling
    if a.enabled:
        if a.min_replicas > a.max_replicas:
            out.append(
                f"autoscaling.min_replicas: {a.min_replicas} exceeds autoscaling.max_replicas ({a.max_replicas})"
            )
        if "replicas" in s.model_fields_set:
            out.append(
                "serving.replicas: remove it when autoscaling is enabled (autoscaling.min/max_replicas decide)"
            )
        if not c.cluster.create:
            out.append("autoscaling.enabled: needs cluster.create: true (it provisions the extra TPU pools)")
        if s.engine == "jetstream-maxtext" and "prometheus_port" in s.maxtext_extra_args:
            out.append(
                "serving.maxtext_extra_args: prometheus_port is generated when autoscaling.enabled "
                f"(JetStream's exporter on port {catalog.JETSTREAM_METRICS_PORT}); remove it"
            )
    if t.capacity == "flex-start" and not c.cluster.create:
        out.append("tpu.capacity: flex-start needs cluster.create: true (the stack creates the pools)")

    # --- batch job
    b = c.batch_job
    if b.enabled:
        for field in ("input", "output"):
            value = getattr(b, field)
            if value is None:
                out.append(f"batch_job.{field}: required when batch_job.enabled (a gs://bucket/path.jsonl)")
            elif (problem := gcs_path_problem(value)) is not None:
                out.append(f"batch_job.{field}: {problem}")
        if b.input is not None and b.input == b.output:
            out.append("batch_job.output: must differ from batch_job.input")
        if not _DNS_LABEL.match(b.name):
            out.append(f"batch_job.name: {b.name!r} must be a lowercase DNS label")
        if b.max_tokens >= s.max_target_length:
            out.append(
                f"batch_job.max_tokens: {b.max_tokens} must be < serving.max_target_length ({s.max_target_length})"
            )
    return out


# MaxText flags the manifests generate from typed fields (extra args may not repeat them).
_GENERATED_MAXTEXT_KEYS: Final = (
    "model_name",
    "tokenizer_path",
    "load_parameters_path",
    "max_prefill_predict_length",
    "max_target_length",
    "ici_fsdp_parallelism",
    "ici_autoregressive_parallelism",
    "ici_tensor_parallelism",
    "scan_layers",
    "weight_dtype",
    "per_device_batch_size",
    "quantization",
    "quantize_kvcache",
    "checkpoint_is_quantized",
    "enable_model_warmup",
    "inference_server",
)


# ------------------------------------------------------------------------------------- loading


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key (check the spelling; see docs/infra.md for the fields)")
        elif e["type"] == "value_error":
            lines.extend(str(e["ctx"]["error"]).splitlines())
        elif e["type"] == "missing":
            lines.append(f"{loc}: required")
        else:
            lines.append(f"{loc}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_stack_config(values: Mapping[str, Any], *, stack: str) -> StackConfig:
    """Build the config from Pulumi-style keys (`gcp:project`, `<project>:<section>`).

    Section values may be mappings (a stack file) or JSON strings (Pulumi's runtime config).
    Keys of our namespace that are not sections are errors; other namespaces are left to their
    providers.
    """
    raw: dict[str, Any] = {"stack": stack}
    problems: list[str] = []
    for key, value in values.items():
        namespace, _, name = key.partition(":")
        if key == "gcp:project":
            raw["project"] = value
        elif namespace == PROJECT:
            if name == "environment":
                raw[name] = value
            elif name in _SECTIONS:
                raw[name] = json.loads(value) if isinstance(value, str) else value
            else:
                known = ", ".join(["environment", *_SECTIONS])
                problems.append(f"{key}: unknown key (known: {known})")
    if "project" not in raw:
        problems.append("gcp:project: required (pulumi config set gcp:project <your project id>)")
    if problems:
        raise ConfigError("\n".join(problems))
    try:
        return StackConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None


def stack_name_from_path(path: Path) -> str:
    m = re.fullmatch(r"Pulumi\.(.+)\.yaml", path.name)
    if not m:
        raise ConfigError(f"{path}: stack files are named Pulumi.<stack>.yaml")
    return m.group(1)


def read_stack_file(path: Path) -> dict[str, Any]:
    """The `config:` mapping of a stack file (no validation)."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such stack file")
    doc = yaml.safe_load(path.read_text()) or {}
    config = doc.get("config", {})
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: `config:` must be a mapping")
    return config


def load_stack_file(path: Path) -> StackConfig:
    return parse_stack_config(read_stack_file(path), stack=stack_name_from_path(path))
