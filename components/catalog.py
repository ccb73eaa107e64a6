"""Facts the stack is built from, in one place: TPU generations, models, ports, pinned images.

Everything else (validation, node pools, manifests, docs) reads these tables; nothing restates
them. Sources: the Cloud TPU / GKE TPU planning pages and the reference deployments in
`../shared/reference/` (ports, images, flags).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

GIB: Final = 1024**3

# --- Ports (the reference YAMLs' values; the Service, probes and Pathways flags all use these) ---
HTTP_PORT: Final = 8000  # HTTP front end / our server; Service port and health probes
JETSTREAM_PORT: Final = 9000  # JetStream gRPC inside the leader pod
RESOURCE_MANAGER_PORT: Final = 38677  # Pathways resource manager
WORKER_PORT: Final = 38679  # Pathways worker, one per TPU VM
PROXY_PORT: Final = 38681  # Pathways proxy: the JAX client's backend target
# JetStream's Prometheus exporter: MaxText starts it only when given `prometheus_port=<port>` (its
# server entry point builds a MetricsServerConfig from that flag; 0, the default, means off). 9100
# is the port Google's GKE JetStream examples use; the reference YAMLs start no exporter.
JETSTREAM_METRICS_PORT: Final = 9100

HEALTH_PATH: Final = "/healthcheck"
METRICS_PATH: Final = "/metrics"  # Prometheus endpoint of our server and of JetStream's exporter
TPU_RESOURCE: Final = "google.com/tpu"
TPU_TAINT_KEY: Final = "google.com/tpu"
NODEPOOL_LABEL: Final = "cloud.google.com/gke-nodepool"
ACCELERATOR_LABEL: Final = "cloud.google.com/gke-tpu-accelerator"
TOPOLOGY_LABEL: Final = "cloud.google.com/gke-tpu-topology"

# Fraction of HBM the memory-fit estimate lets weights + KV cache use; the rest is left for
# activations, XLA scratch buffers and runtime reservations.
HBM_USABLE_FRACTION: Final = 0.95


@dataclass(frozen=True)
class MachineType:
    """One GCE TPU machine type: how many chips each VM carries."""

    name: str
    chips_per_vm: int


@dataclass(frozen=True)
class TpuGeneration:
    """What GKE and Pathways need to know about one TPU generation."""

    name: str
    node_label: str  # value of cloud.google.com/gke-tpu-accelerator
    pathways_instance_prefix: str  # `--instance_type=<prefix>:<topology>`
    hbm_bytes_per_chip: int
    machine_types: tuple[MachineType, ...]
    # topology -> {machine type name -> VMs in the slice}; a topology absent for a machine type is
    # not offered with it.
    topologies: MappingProxyType[str, MappingProxyType[str, int]]
    zones: tuple[str, ...]  # zones known to offer the generation (extend as Google adds more)
    min_gke_version: str
    # Zones where GKE offers the generation with flex-start (see FLEX_START_SOURCE).
    flex_start_zones: tuple[str, ...]
    # Cloud Quotas ids (compute.googleapis.com) the slice's chips count against, per capacity type:
    # on-demand and reservations use `quota_on_demand`; spot and flex-start the preemptible one.
    quota_on_demand: str
    quota_preemptible: str

    def machine_type(self, name: str) -> MachineType | None:
        return next((m for m in self.machine_types if m.name == name), None)

    def chips(self, topology: str) -> int:
        """Chips in a slice of this topology (product of the dimensions)."""
        total = 1
        for dim in topology.split("x"):
            total *= int(dim)
        return total

    def region_of(self, zone: str) -> str:
        return zone.rsplit("-", 1)[0]


def _topologies(table: dict[str, dict[str, int]]) -> MappingProxyType[str, MappingProxyType[str, int]]:
    return MappingProxyType({k: MappingProxyType(v) for k, v in table.items()})


_V6E_1T, _V6E_4T, _V6E_8T = "ct6e-standard-1t", "ct6e-standard-4t", "ct6e-standard-8t"
_V5E_1T, _V5E_4T, _V5E_8T = "ct5lp-hightpu-1t", "ct5lp-hightpu-4t", "ct5lp-hightpu-8t"
_V5P_4T = "ct5p-hightpu-4t"

TPU_GENERATIONS: Final[MappingProxyType[str, TpuGeneration]] = MappingProxyType(
    {
        "v6e": TpuGeneration(
            name="v6e",
            node_label="tpu-v6e-slice",
            pathways_instance_prefix="tpuv6e",
            hbm_bytes_per_chip=32 * GIB,
            machine_types=(MachineType(_V6E_1T, 1), MachineType(_V6E_4T, 4), MachineType(_V6E_8T, 8)),
            topologies=_topologies(
                {
                    "1x1": {_V6E_1T: 1},
                    "2x2": {_V6E_4T: 1},
                    "2x4": {_V6E_8T: 1, _V6E_4T: 2},
                    "4x4": {_V6E_4T: 4},
                    "4x8": {_V6E_4T: 8},
                    "8x8": {_V6E_4T: 16},
                    "8x16": {_V6E_4T: 32},
                    "16x16": {_V6E_4T: 64},
                }
            ),
            zones=(
                "us-central1-b",
                "us-east1-d",
                "us-east5-a",
                "us-east5-b",
                "us-south1-a",
                "europe-west4-a",
                "asia-northeast1-b",
            ),
            min_gke_version="1.31.2-gke.1115000",
            flex_start_zones=("asia-northeast1-b", "us-east5-a", "us-east5-b"),
            # v6e has no per-generation on-demand id: the family quota, dimension tpu_family=CT6E.
            quota_on_demand="TPUS-PER-TPU-FAMILY-per-project-region (tpu_family=CT6E)",
            quota_preemptible="PREEMPTIBLE-TPU-V6E-per-project-region",
        ),
        "v5e": TpuGeneration(
            name="v5e",
            node_label="tpu-v5-lite-podslice",
            pathways_instance_prefix="tpuv5e",
            hbm_bytes_per_chip=16 * GIB,
            machine_types=(MachineType(_V5E_1T, 1), MachineType(_V5E_4T, 4), MachineType(_V5E_8T, 8)),
            topologies=_topologies(
                {
                    "1x1": {_V5E_1T: 1},
                    "2x2": {_V5E_4T: 1},
                    "2x4": {_V5E_8T: 1, _V5E_4T: 2},
                    "4x4": {_V5E_4T: 4},
                    "4x8": {_V5E_4T: 8},
                    "8x8": {_V5E_4T: 16},
                    "8x16": {_V5E_4T: 32},
                    "16x16": {_V5E_4T: 64},
                }
            ),
            zones=(
                "us-central1-a",
                "us-south1-a",
                "us-west1-c",
                "us-west4-a",
                "us-east1-c",
                "us-east5-b",
                "europe-west4-b",
                "asia-southeast1-b",
            ),
            min_gke_version="1.27.2-gke.2100",
            flex_start_zones=("us-west4-a",),
            quota_on_demand="TPU-LITE-PODSLICE-V5-per-project-region",
            quota_preemptible="PREEMPTIBLE-TPU-LITE-PODSLICE-V5-per-project-region",
        ),
        "v5p": TpuGeneration(
            name="v5p",
            node_label="tpu-v5p-slice",
            pathways_instance_prefix="tpuv5",
            hbm_bytes_per_chip=95 * GIB,
            machine_types=(MachineType(_V5P_4T, 4),),
            topologies=_topologies(
                {
                    "2x2x1": {_V5P_4T: 1},
                    "2x2x2": {_V5P_4T: 2},
                    "2x2x4": {_V5P_4T: 4},
                    "2x4x4": {_V5P_4T: 8},
                    "4x4x4": {_V5P_4T: 16},
                    "4x4x8": {_V5P_4T: 32},
                    "4x8x8": {_V5P_4T: 64},
                }
            ),
            zones=("us-central1-a", "us-east5-a", "europe-west4-b"),
            min_gke_version="1.28.3-gke.1024000",
            flex_start_zones=("us-east5-a",),
            quota_on_demand="TPU-V5P-per-project-region",
            quota_preemptible="PREEMPTIBLE-TPU-V5P-per-project-region",
        ),
    }
)


@dataclass(frozen=True)
class ModelSpec:
    """Architecture facts the memory estimate and the server flags need."""

    name: str
    params: int
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    vocab: int
    tokenizer: str  # MaxText asset path or Hugging Face tokenizer id
    maxtext_name: str | None  # `model_name=` for MaxText; None: not served by JetStream/MaxText
    tied_embeddings: bool = False

    def kv_bytes_per_token(self, kv_dtype_bytes: int) -> int:
        """K and V for every layer, one token."""
        return 2 * self.layers * self.kv_heads * self.head_dim * kv_dtype_bytes

    @property
    def vocab_params(self) -> int:
        """The embedding table plus, when untied, the logits projection (vocab x hidden each)."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def layer_params(self) -> int:
        """One decoder layer (attention, MLP, its norms): the rest without the vocab matrices and the
        final norm."""
        return (self.params - self.vocab_params - self.hidden) // self.layers


_LLAMA2_TOK = "assets/tokenizer.llama2"
_LLAMA3_TOK = "assets/tokenizer_llama3.tiktoken"

MODELS: Final[MappingProxyType[str, ModelSpec]] = MappingProxyType(
    {
        m.name: m
        for m in (
            ModelSpec("llama2-7b", 6_738_415_616, 32, 32, 32, 128, 4096, 32000, _LLAMA2_TOK, "llama2-7b"),
            ModelSpec("llama2-13b", 13_015_864_320, 40, 40, 40, 128, 5120, 32000, _LLAMA2_TOK, "llama2-13b"),
            ModelSpec("llama2-70b", 68_976_648_192, 80, 64, 8, 128, 8192, 32000, _LLAMA2_TOK, "llama2-70b"),
            ModelSpec("llama3-8b", 8_030_261_248, 32, 32, 8, 128, 4096, 128256, _LLAMA3_TOK, "llama3-8b"),
            ModelSpec("llama3-70b", 70_553_706_496, 80, 64, 8, 128, 8192, 128256, _LLAMA3_TOK, "llama3-70b"),
            ModelSpec("llama3.1-8b", 8_030_261_248, 32, 32, 8, 128, 4096, 128256, _LLAMA3_TOK, "llama3.1-8b"),
            ModelSpec(
                "llama3.1-70b", 70_553_706_496, 80, 64, 8, 128, 8192, 128256, _LLAMA3_TOK, "llama3.1-70b"
            ),
            ModelSpec(
                "llama3.1-405b",
                405_853_388_800,
                126,
                128,
                8,
                128,
                16384,
                128256,
                _LLAMA3_TOK,
                "llama3.1-405b",
            ),
            # The small model the app serves locally (embedded GGUF); our server only.
            ModelSpec(
                "smollm2-135m",
                134_515_008,
                30,
                9,
                3,
                64,
                576,
                49152,
                "HuggingFaceTB/SmolLM2-135M-Instruct",
                None,
                tied_embeddings=True,
            ),
        )
    }
)

DTYPE_BYTES: Final[MappingProxyType[str, int]] = MappingProxyType({"float32": 4, "bfloat16": 2, "int8": 1})

# --- The inference-app model container's memory (leader pod) ---
# It never holds the model: Hugging Face checkpoints stream a device shard at a time through a
# queue two shards deep (inference_app/model/streaming.py), MaxText checkpoints are restored one
# layer at a time (model/maxtext.py; under Pathways persistence the TPU workers read them from GCS
# themselves). Its request is the process itself (JAX client, tokenizer, HTTP server) plus
# MODEL_SERVER_STREAM_UNITS of the largest unit in flight (one layer, or the embedding table when
# that is larger, as the checkpoint stores it), not the model: 405B's 810 GB would fit no node.
MODEL_SERVER_BASE_MEMORY: Final = 4 * GIB
MODEL_SERVER_STREAM_UNITS: Final = 2
# Set to 1 on the inference-app container for a MaxText checkpoint: pathwaysutils then registers
# its Orbax handler, and the TPU workers read the checkpoint from GCS (it needs one saved without
# OCDBT, which pre-flight checks).
PATHWAYS_PERSISTENCE_ENV: Final = "ENABLE_PATHWAYS_PERSISTENCE"
# Bytes per parameter of a checkpoint that is not int8: bf16, as Meta and MaxText publish them
# (a float32 engine casts on the devices; host shards keep the checkpoint's dtype).
CHECKPOINT_FLOAT_BYTES: Final = 2

# --- Flex-start (GKE "About flex-start provisioning mode", cloud.google.com/kubernetes-engine/docs/
# concepts/provisioning-model, stored copy read 2026-11-29): TPUs need GKE >= 1.33.0-gke.1712000; the
# zones per generation are in TPU_GENERATIONS; a flex-start VM runs at most seven days
# (maxRunDurationSeconds, default seven days), then GKE deletes it and the pool scales up again.
FLEX_START_MIN_GKE_VERSION: Final = "1.33.0-gke.1712000"
FLEX_START_MAX_RUN_HOURS: Final = 7 * 24
FLEX_START_SOURCE: Final = "GKE docs, About flex-start provisioning mode (read 2026-11-29)"

# --- Prices: USD per chip-hour, (on-demand, spot), by generation and region. Source: Google's Cloud
# Billing Catalog SKUs as published in skypilot-org/skypilot-catalog catalogs/v7/gcp/vms.csv
# (commit 017e2502, rows tpu-v6e-1, tpu-v5litepod-1, tpu-v5p-8 / 4 chips), read 2026-11-29; check
# cloud.google.com/tpu/pricing before budgeting. Flex-start and committed-use prices differ and are
# not listed: estimates use the on-demand column for them (an upper bound).
PRICE_SOURCE: Final = (
    "Cloud Billing Catalog SKUs via skypilot-org/skypilot-catalog catalogs/v7/gcp/vms.csv "
    "@017e2502, read 2026-11-29 (check cloud.google.com/tpu/pricing)"
)
TPU_PRICES_PER_CHIP_HOUR: Final[MappingProxyType[str, MappingProxyType[str, tuple[float, float]]]] = (
    MappingProxyType(
        {
            "v6e": MappingProxyType(
                {
                    "us-central1": (2.70, 0.64833),
                    "us-east1": (2.70, 0.64833),
                    "us-east5": (2.70, 1.08),
                    "us-south1": (2.70, 1.89),
                    "europe-west4": (2.97, 0.71316),
                    "asia-northeast1": (3.24, 1.07681),
                }
            ),
            "v5e": MappingProxyType(
                {
                    "us-central1": (1.20, 0.21298),
                    "us-east1": (1.20, 0.21298),
                    "us-east5": (1.20, 0.60),
                    "us-south1": (1.416, 0.5664),
                    "us-west1": (1.20, 0.21298),
                    "us-west4": (1.20, 0.4692),
                    "europe-west4": (1.56, 0.44261),
                    "asia-southeast1": (1.56, 0.78),
                }
            ),
            "v5p": MappingProxyType(
                {
                    "us-central1": (4.20, 1.68),
                    "us-east5": (4.20, 1.56009),
                    "europe-west4": (4.2525, 1.34849),
                }
            ),
        }
    )
)
HOURS_PER_MONTH: Final = 730  # the usual cloud-billing month (8760 h / 12)
# Where the quota ids above come from: GKE TPUs count against Compute Engine quota (Cloud Quotas),
# not the Cloud TPU API's; public field reports of 2026-08 (ids as `gcloud alpha quotas info
# describe` prints them) and the Cloud TPU consumption-options page (reservations use on-demand
# quota, spot and flex-start the preemptible one).
QUOTA_SOURCE: Final = "Compute Engine quota ids (Cloud Quotas), as reported 2026-08; verify with gcloud"

# --- Images: pinned defaults. Never `:latest`. ---
# Pathways publishes server/proxy images per JAX version (`server:jax-<v>`, `proxy_server:jax-<v>`),
# and the proxy must match the JAX of the client in the model container. Google's tutorial pairs
# jetstream-pathways:v0.2.0 with jax-0.5.3; our image pins JAX exactly (pyproject.toml, `tpu` extra)
# to INFERENCE_APP_JAX_VERSION, for which public Pathways manifests use server/proxy_server:jax-0.10.0
# (read 2026-11-29). tests/docker ties the pin to this constant.
PATHWAYS_REGISTRY: Final = "us-docker.pkg.dev/cloud-tpu-v2-images/pathways"
JETSTREAM_JAX_VERSION: Final = "0.5.3"
INFERENCE_APP_JAX_VERSION: Final = "0.10.0"
ENGINE_JAX_VERSIONS: Final[MappingProxyType[str, str]] = MappingProxyType(
    {"jetstream-maxtext": JETSTREAM_JAX_VERSION, "inference-app": INFERENCE_APP_JAX_VERSION}
)


def pathways_server_image(jax_version: str) -> str:
    return f"{PATHWAYS_REGISTRY}/server:jax-{jax_version}"


def pathways_proxy_image(jax_version: str) -> str:
    return f"{PATHWAYS_REGISTRY}/proxy_server:jax-{jax_version}"


JETSTREAM_MAXTEXT_IMAGE: Final = "us-docker.pkg.dev/cloud-tpu-images/inference/jetstream-pathways:v0.2.0"
JETSTREAM_HTTP_IMAGE: Final = "us-docker.pkg.dev/cloud-tpu-images/inference/jetstream-http:v0.2.3"

# --- LeaderWorkerSet controller ---
LWS_DEFAULT_VERSION: Final = "v0.10.0"
LWS_NAMESPACE: Final = "lws-system"
LWS_API_VERSION: Final = "leaderworkerset.x-k8s.io/v1"
# LWS labels every pod with its index in the group; the leader is worker 0.
LWS_WORKER_INDEX_LABEL: Final = "leaderworkerset.sigs.k8s.io/worker-index"

# Managed Service for Prometheus: a namespaced PodMonitoring makes GKE's collectors scrape pods and
# write the samples to Cloud Monitoring as prometheus.googleapis.com|<name>|<kind> metrics.
POD_MONITORING_API_VERSION: Final = "monitoring.googleapis.com/v1"
METRICS_SCRAPE_INTERVAL: Final = "15s"  # = the HPA's default sync period


def lws_manifest_url(version: str) -> str:
    """The release manifest the provider fetches at deploy time (the guide's install step)."""
    return f"https://github.com/kubernetes-sigs/lws/releases/download/{version}/manifests.yaml"


# MaxText's disaggregated server class, as in the reference deployment.
MAXTEXT_DISAGGREGATED_SERVER: Final = "ExperimentalMaxtextDisaggregatedServer_8"
# Extra capabilities the reference gives the JetStream container in disaggregated mode.
DISAGGREGATED_CAPABILITIES: Final = ("SYS_PTRACE", "NET_ADMIN", "SYS_TIME")

# Default HPA metric per engine: each server's queue of requests waiting for prefill, as Managed
# Service for Prometheus exports it to Cloud Monitoring (read by the custom metrics adapter).
AUTOSCALING_METRICS: Final[MappingProxyType[str, str]] = MappingProxyType(
    {
        "jetstream-maxtext": "prometheus.googleapis.com|jetstream_prefill_backlog_size|gauge",
        "inference-app": "prometheus.googleapis.com|inference_queue_depth|gauge",
    }
)

# Custom Metrics Stackdriver Adapter: serves Cloud Monitoring metrics (Managed Service for
# Prometheus samples included) to the HPA through the custom/external metrics APIs. Pinned to a
# commit of GoogleCloudPlatform/k8s-stackdriver (2026-08-17, image v0.16.9-gke.0); its Kubernetes SA
# reads Cloud Monitoring through Workload Identity.
METRICS_ADAPTER_MANIFEST_URL: Final = (
    "https://raw.githubusercontent.com/GoogleCloudPlatform/k8s-stackdriver/"
    "af49d863755c0535f598cfde9288ae9a75251d38/custom-metrics-stackdriver-adapter/deploy/production/"
    "adapter_new_resource_model.yaml"
)
METRICS_ADAPTER_NAMESPACE: Final = "custom-metrics"
METRICS_ADAPTER_KSA: Final = "custom-metrics-stackdriver-adapter"

# GKE node-pool service-account roles (least privilege: logs, metrics, image pulls).
NODE_SA_PROJECT_ROLES: Final = (
    "roles/container.defaultNodeServiceAccount",
    "roles/artifactregistry.reader",
)
