"""The stack's typed configuration: frozen Pydantic sections, the StackConfig and its derived facts.

Read once (from Pulumi config in `__main__.py`, or from a stack file by `stack_file`) and validated
before any resource is registered: Pydantic checks each field, `config_rules` (one function per
section) the rules across fields. Unknown keys are errors, and every error names the field and the
fix. Derived facts (VMs, LWS size, slots, memory estimate, the Pathways images of the engine's JAX,
the cluster's location) are properties, never fields a user could set inconsistently.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components import catalog, config_rules

PROJECT: Final = "tpu-pathways-inference"  # Pulumi project name = our config namespace
PROJECT_PLACEHOLDER: Final = "your-gcp-project-id"


class ConfigError(ValueError):
    """Invalid stack configuration; the message lists every problem as `field: problem (fix)`."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


_M = TypeVar("_M", bound=_Model)

# Values of command-line flags and env vars: `pulumi config set --path` stores `1` as an integer
# and `true` as a boolean, so these accept numbers and booleans besides strings.
FlagValue = bool | int | float | str


def _defaults(cls: type[_M]) -> _M:
    """A section with every default (typed for mypy, which has no Pydantic plugin here)."""
    return cls.model_validate({})


# ------------------------------------------------------------------------------------- sections


class SystemPoolConfig(_Model):
    """CPU pool for the LWS controller, kube-system and the batch Job."""

    machine_type: str = Field("e2-standard-4", description="GCE machine type of the CPU system pool.")
    node_count: int = Field(1, ge=1, le=10, description="Nodes in the system pool.")


class MaintenanceWindow(_Model):
    """A recurring window in which GKE may upgrade (RFC 3339 times, an RFC 5545 RRULE, UTC)."""

    start_time: str = Field(..., description="First window's start, e.g. 2025-01-04T02:00:00Z.")
    end_time: str = Field(..., description="First window's end (sets the length), e.g. 2025-01-04T08:00:00Z.")
    recurrence: str = Field(..., description="RRULE, e.g. FREQ=WEEKLY;BYDAY=SA,SU.")


class MaintenanceExclusion(_Model):
    """A period without upgrades, e.g. a launch or a traffic peak."""

    name: str = Field(..., description="Exclusion name.")
    start_time: str = Field(..., description="RFC 3339 start.")
    end_time: str = Field(..., description="RFC 3339 end.")
    scope: Literal["NO_UPGRADES", "NO_MINOR_UPGRADES", "NO_MINOR_OR_NODE_UPGRADES"] = Field(
        "NO_MINOR_OR_NODE_UPGRADES", description="What is held back (NO_UPGRADES: at most 30 days)."
    )


class MaintenanceConfig(_Model):
    window: MaintenanceWindow | None = Field(
        None,
        description="Recurring maintenance window (>= 48 h per 32 days in runs of >= 4 h); "
        "unset: GKE may upgrade at any time.",
    )
    exclusions: list[MaintenanceExclusion] = Field(
        default_factory=list, description="Maintenance exclusions (no upgrades in these periods)."
    )


class ClusterConfig(_Model):
    create: bool = Field(True, description="Create the GKE cluster; false deploys into an existing cluster.")
    name: str = Field("pathways-inference", description="GKE cluster name (DNS label, at most 40 chars).")
    zone: str = Field(
        ..., description="Zone of the TPU pools (and of a zonal cluster); must offer the TPU generation."
    )
    regional: bool = Field(
        False,
        description="Regional control plane (replicated across the region's zones, no downtime when GKE "
        "upgrades it); the node pools stay in `zone`.",
    )
    release_channel: Literal["RAPID", "REGULAR", "STABLE"] = Field(
        "REGULAR", description="GKE release channel; its default version is used unless min_master_version."
    )
    min_master_version: str | None = Field(
        None,
        description="Optional minimum GKE version: a minor like 1.33 (recommended) or an exact version "
        "the zone offers. Unset: the channel's default. Checked at preview against the TPU generation's "
        "minimum (v6e 1.31.2-gke.1115000; flex-start 1.33.0-gke.1712000).",
    )
    deletion_protection: bool = Field(
        True, description="GKE deletion protection; must be true in production."
    )
    system_pool: SystemPoolConfig = Field(
        default_factory=lambda: _defaults(SystemPoolConfig), description="The CPU system pool."
    )
    maintenance: MaintenanceConfig = Field(
        default_factory=lambda: _defaults(MaintenanceConfig), description="When GKE may upgrade."
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


class AuthorizedNetwork(_Model):
    cidr_block: str = Field(..., description="CIDR allowed to reach the control plane, e.g. 203.0.113.0/24.")
    display_name: str = Field(..., description="What the range is (office VPN, CI runners, ...).")


class NetworkConfig(_Model):
    """The cluster's VPC: created per stack by default (many organisations have no `default` network)."""

    create: bool = Field(
        True, description="Create a VPC and subnetwork for the cluster; false: use `name` and `subnetwork`."
    )
    name: str | None = Field(
        None, description="VPC name; default <cluster.name>-vpc when created, required when not."
    )
    subnetwork: str | None = Field(
        None, description="Subnetwork name (in the TPU region); default <cluster.name>-nodes when created."
    )
    nodes_cidr: str = Field("10.10.0.0/20", description="Created subnetwork: primary range (node IPs).")
    pods_cidr: str = Field("10.20.0.0/14", description="Created subnetwork: secondary range for pod IPs.")
    services_cidr: str = Field(
        "10.24.0.0/20", description="Created subnetwork: secondary range for Services."
    )
    pods_range_name: str = Field("pods", description="Name of the pods secondary range.")
    services_range_name: str = Field("services", description="Name of the Services secondary range.")
    private_nodes: bool | None = Field(
        None,
        description="Nodes without public IPs; unset: true in production, false in development.",
    )
    cloud_nat: bool | None = Field(
        None,
        description="Cloud NAT for the nodes' egress (image pulls outside Google, the LWS controller's "
        "registry); unset: on for private nodes in a created VPC.",
    )
    master_authorized_networks: list[AuthorizedNetwork] = Field(
        default_factory=list,
        description="CIDRs allowed to reach the control plane (empty: any address, with authentication).",
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
    max_run_duration_hours: int | None = Field(
        None,
        ge=1,
        le=catalog.FLEX_START_MAX_RUN_HOURS,
        description="Flex-start only: hours a TPU VM may run before GKE deletes it (at most 168 = 7 days, "
        "the default); the pool then obtains a new slice.",
    )


class ModelConfig(_Model):
    name: str = Field(..., description="Model catalog key, e.g. llama3.1-405b.")
    checkpoint: str = Field(
        ...,
        description="gs:// path of the checkpoint: MaxText (Orbax, e.g. .../0/items) for jetstream-maxtext; "
        "inference-app also reads a Hugging Face directory or a .gguf file. Pre-flight says which it found.",
    )
    weight_dtype: Literal["bfloat16", "float32"] = Field("bfloat16", description="Compute/weight dtype.")
    quantization: Literal["none", "int8"] = Field("none", description="Weight quantization.")
    quantize_kvcache: bool = Field(False, description="int8 KV cache.")
    checkpoint_is_quantized: bool = Field(False, description="The checkpoint is already int8.")
    tokenizer_path: str | None = Field(
        None,
        description="jetstream-maxtext only: MaxText tokenizer_path= flag (an asset in its image); omitted "
        "when unset (the MaxText config's default).",
    )
    hf_tokenizer_path: str | None = Field(
        None,
        description="inference-app with a MaxText checkpoint (which carries no tokenizer): gs:// Hugging "
        "Face directory with tokenizer.json (or the file) of the same model; rendered as "
        "`--tokenizer-path`, with `--model <MaxText name>`. Pre-flight requires it for a MaxText checkpoint.",
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
    maxtext_extra_args: dict[str, FlagValue] = Field(
        default_factory=dict,
        description="Extra MaxText key=value flags, in order; may not repeat generated keys. Numbers and "
        "booleans (as `config set --path` stores them) render as MaxText reads them (true/false).",
    )
    pathways_rm_extra_args: list[str] = Field(
        default_factory=list, description="Extra flags for the Pathways resource manager."
    )
    model_server_env: dict[str, FlagValue] = Field(
        default_factory=dict, description="Extra env for the model container (values rendered as strings)."
    )
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
    pathways_server: str | None = Field(
        None,
        description="Pathways server (rm + workers); default server:jax-<v> for the engine's JAX "
        "(JetStream 0.5.3, inference-app: catalog.INFERENCE_APP_JAX_VERSION).",
    )
    pathways_proxy: str | None = Field(
        None, description="Pathways proxy; default proxy_server:jax-<v>, matching the model container's JAX."
    )
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
    install_metrics_adapter: bool = Field(
        True,
        description="Install the Custom Metrics Stackdriver Adapter (pinned manifest) with read access to "
        "Cloud Monitoring; false if the cluster already serves the custom/external metrics APIs.",
    )


class BatchJobConfig(_Model):
    enabled: bool = Field(False, description="Create a Kubernetes Job that runs `inference_app batch`.")
    name: str = Field("batch-inference", description="Job name.")
    input: str | None = Field(None, description="gs:// JSONL of prompts; required when enabled.")
    output: str | None = Field(None, description="gs:// JSONL results (resumable); required when enabled.")
    concurrency: int = Field(8, ge=1, le=1024, description="Concurrent requests.")
    max_tokens: int = Field(256, ge=1, description="Tokens generated per prompt.")
    backoff_limit: int = Field(3, ge=0, description="Job retries (the batch client resumes).")


class StackConfig(_Model):
    """Everything one stack deploys. Built by `parse_stack_config`; all rules checked at construction."""

    project: str = Field(..., description="GCP project id (`gcp:project`).")
    stack: str = Field(..., description="Pulumi stack name.")
    environment: Literal["production", "development"] = Field(
        "production", description="production enforces deletion protection."
    )
    cluster: ClusterConfig
    network: NetworkConfig = Field(default_factory=lambda: _defaults(NetworkConfig))
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
    def weight_bytes(self) -> int:
        """HBM the engine's weights take, in the dtype it holds them (int8 scales add ~0.1%).

        With int8, our engine quantizes every matrix, the embedding and logits included; JetStream/
        MaxText quantizes only the decoder layers' kernels (AQT) and keeps the embedding and the
        logits projection in `weight_dtype` (MaxText `layers/decoders.py`).
        """
        spec = self.model_spec
        float_bytes = catalog.DTYPE_BYTES[self.model.weight_dtype]
        if self.model.quantization != "int8":
            return spec.params * float_bytes
        if self.serving.engine == "inference-app":
            return spec.params
        return spec.params - spec.vocab_params + spec.vocab_params * float_bytes

    @property
    def kv_dtype_bytes(self) -> int:
        return 1 if self.model.quantize_kvcache else catalog.DTYPE_BYTES[self.model.weight_dtype]

    @property
    def memory_estimate_bytes(self) -> tuple[int, int]:
        """(needed, usable) HBM bytes per engine slice: weights + KV cache for every slot."""
        spec = self.model_spec
        weights = self.weight_bytes
        kv = (
            spec.kv_bytes_per_token(self.kv_dtype_bytes)
            * self.serving.max_target_length
            * self.slots_per_engine
        )
        usable = int(self.chips_per_slice * self.generation.hbm_bytes_per_chip * catalog.HBM_USABLE_FRACTION)
        return weights + kv, usable

    @property
    def app_restores_maxtext(self) -> bool:
        """inference-app serving a MaxText checkpoint: declared by `model.hf_tokenizer_path`.

        The checkpoint's format is only known from its listing, which pre-flight reads and holds
        against this (a MaxText checkpoint without the tokenizer path, or the path next to a
        Hugging Face or GGUF checkpoint, is refused there).
        """
        return self.serving.engine == "inference-app" and self.model.hf_tokenizer_path is not None

    @property
    def model_server_memory_request_bytes(self) -> int:
        """The inference-app container's memory request: the process plus a few streamed units.

        Sized for streaming (catalog.MODEL_SERVER_STREAM_UNITS), never for the whole model.
        """
        spec = self.model_spec
        unit = max(spec.layer_params, spec.vocab * spec.hidden)
        per_param = 1 if self.model.checkpoint_is_quantized else catalog.CHECKPOINT_FLOAT_BYTES
        return catalog.MODEL_SERVER_BASE_MEMORY + catalog.MODEL_SERVER_STREAM_UNITS * unit * per_param

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
    def cluster_location(self) -> str:
        """Where the control plane lives: the TPU zone, or its region with a regional control plane."""
        return self.region if self.cluster.regional else self.cluster.zone

    @property
    def required_gke_version(self) -> str:
        """The oldest GKE version the TPU pools accept (flex-start raises the generation's minimum)."""
        if self.tpu.capacity == "flex-start":
            return catalog.FLEX_START_MIN_GKE_VERSION
        return self.generation.min_gke_version

    @property
    def private_nodes(self) -> bool:
        if self.network.private_nodes is not None:
            return self.network.private_nodes
        return self.environment == "production"

    @property
    def cloud_nat(self) -> bool:
        if self.network.cloud_nat is not None:
            return self.network.cloud_nat
        return self.private_nodes and self.network.create

    @property
    def network_name(self) -> str:
        return self.network.name if self.network.name is not None else f"{self.cluster.name}-vpc"

    @property
    def subnetwork_name(self) -> str:
        return (
            self.network.subnetwork if self.network.subnetwork is not None else f"{self.cluster.name}-nodes"
        )

    @property
    def pathways_jax_version(self) -> str:
        """The JAX the leader's model container runs; the Pathways proxy must match it."""
        return catalog.ENGINE_JAX_VERSIONS[self.serving.engine]

    @property
    def pathways_server_image(self) -> str:
        if self.images.pathways_server is not None:
            return self.images.pathways_server
        return catalog.pathways_server_image(self.pathways_jax_version)

    @property
    def pathways_proxy_image(self) -> str:
        if self.images.pathways_proxy is not None:
            return self.images.pathways_proxy
        return catalog.pathways_proxy_image(self.pathways_jax_version)

    @property
    def checkpoint_bucket(self) -> str:
        """The bucket of `model.checkpoint` (the nodes get read access to it)."""
        return config_rules.gcs_bucket(self.model.checkpoint)

    @property
    def tokenizer_bucket(self) -> str | None:
        """The bucket of `model.hf_tokenizer_path` when it is another one (the nodes read it too).

        The path is only accepted with engine inference-app (config_rules), so this is the bucket of
        the tokenizer the leader's model container reads.
        """
        path = self.model.hf_tokenizer_path
        if path is None or config_rules.gcs_bucket(path) == self.checkpoint_bucket:
            return None
        return config_rules.gcs_bucket(path)

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
        problems = config_rules.problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self


def _sections() -> dict[str, type[BaseModel]]:
    """The config sections (`tpu-pathways-inference:<name>` keys), read off StackConfig's fields."""
    out: dict[str, type[BaseModel]] = {}
    for name, info in StackConfig.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            out[name] = info.annotation
    return out


SECTIONS: Final = MappingProxyType(_sections())


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
            elif name in SECTIONS:
                raw[name] = json.loads(value) if isinstance(value, str) else value
            else:
                known = ", ".join(["environment", *SECTIONS])
                problems.append(f"{key}: unknown key (known: {known})")
    if "project" not in raw:
        problems.append("gcp:project: required (pulumi config set gcp:project <your project id>)")
    if problems:
        raise ConfigError("\n".join(problems))
    try:
        return StackConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None
