"""The cross-field rules of the stack config: one function per section, run by `StackConfig`.

Pydantic checks each field's type and bounds; these functions check what depends on other fields
or on the catalog (a topology of the generation, a product of parallelism degrees, the memory fit).
Each returns every problem it finds as `field: what is wrong (how to fix)`, so a user sees all of
them at once. The helpers (`gcs_path_problem`, `image_problem`, ...) are reused by the components.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from components import catalog

if TYPE_CHECKING:
    from components.config import StackConfig

DNS_LABEL: Final = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
_PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_ZONE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
_GKE_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?(?:-gke\.(\d+))?$")
_LWS_VERSION = re.compile(r"^v(\d+)\.(\d+)\.(\d+)$")
_IMAGE = re.compile(
    r"^[a-z0-9.-]+(?::\d+)?(?:/[a-z0-9._-]+)+(?::[A-Za-z0-9_][A-Za-z0-9._-]{0,127}|@sha256:[0-9a-f]{64})$"
)

# MaxText flags the manifests generate from typed fields; `serving.maxtext_extra_args` may not
# repeat them. tests/components/test_manifests.py ties this list to what `maxtext_args` emits.
GENERATED_MAXTEXT_KEYS: Final = (
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
# Generated only with autoscaling on (JetStream's Prometheus exporter).
AUTOSCALING_MAXTEXT_KEYS: Final = ("prometheus_port",)


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


def bucket_name_problem(name: str) -> str | None:
    if not _BUCKET.match(name) or ".." in name:
        return f"{name!r} is not a valid bucket name (3-63 chars: lowercase letters, digits, - _ .)"
    return None


def image_problem(image: str) -> str | None:
    """Why an image reference is unsafe to deploy (unpinned, :latest, malformed), or None."""
    if not _IMAGE.match(image):
        return f"{image!r} must be registry/path:tag or registry/path@sha256:digest"
    if image.rpartition(":")[2] == "latest":
        return f"{image!r} uses :latest; pin a version tag or digest"
    return None


def gke_version_key(version: str) -> tuple[int, ...] | None:
    """Sortable key; missing parts of a prefix ('1.31') sort last, as GKE resolves it to the newest."""
    m = _GKE_VERSION.match(version)
    if not m:
        return None
    big = 10**12
    return tuple(int(g) if g is not None else big for g in m.groups())


def _shape_ok(c: StackConfig) -> bool:
    """The machine type and topology form a slice the catalog knows (derived facts are defined)."""
    gen, t = c.generation, c.tpu
    return (
        gen.machine_type(t.machine_type) is not None
        and t.topology in gen.topologies
        and t.machine_type in gen.topologies[t.topology]
    )


# ------------------------------------------------------------------------- one rule per section


def stack_rules(c: StackConfig) -> list[str]:
    out = []
    if not _PROJECT_ID.match(c.project):
        out.append(
            f"gcp:project: {c.project!r} is not a GCP project id (set it: pulumi config set gcp:project <id>)"
        )
    if not DNS_LABEL.match(c.stack) or len(c.stack) > 40:
        out.append(f"stack: {c.stack!r} must be a lowercase DNS label of at most 40 characters")
    return out


def cluster_rules(c: StackConfig) -> list[str]:
    out = []
    cl, gen = c.cluster, c.generation
    if not DNS_LABEL.match(cl.name) or len(cl.name) > 40:
        out.append(f"cluster.name: {cl.name!r} must be lowercase letters, digits and '-', at most 40 chars")
    if not _ZONE.match(cl.zone):
        out.append(f"cluster.zone: {cl.zone!r} is not a zone (e.g. us-east5-b)")
    elif cl.zone not in gen.zones and not c.tpu.allow_unlisted_zone:
        out.append(
            f"cluster.zone: {gen.name} is not known in {cl.zone}; use one of {', '.join(gen.zones)} "
            "(or set tpu.allow_unlisted_zone: true if Google now offers it there)"
        )
    if cl.min_master_version is not None:
        wanted = gke_version_key(cl.min_master_version)
        required = c.required_gke_version
        needs = "flex-start TPUs need" if c.tpu.capacity == "flex-start" else f"TPU {gen.name} needs"
        if wanted is None:
            out.append(
                f"cluster.min_master_version: {cl.min_master_version!r} is not a GKE version "
                "(a minor like 1.33, or 1.33.0-gke.1712000)"
            )
        elif wanted < (gke_version_key(required) or ()):
            out.append(
                f"cluster.min_master_version: {needs} GKE >= {required}; {cl.min_master_version} is older "
                "(raise it or leave it unset)"
            )
    out += _maintenance_problems(c)
    if c.environment == "production" and not cl.deletion_protection:
        out.append(
            "cluster.deletion_protection: must be true in production (or set environment: development)"
        )
    existing_only = {
        "kubeconfig_path": cl.kubeconfig_path,
        "context": cl.context,
        "node_service_account": cl.node_service_account,
    }
    if cl.create:
        for key, value in existing_only.items():
            if value is not None:
                out.append(
                    f"cluster.{key}: only for an existing cluster (set cluster.create: false or remove it)"
                )
    elif not cl.context:
        out.append(
            "cluster.context: required with cluster.create: false (the kubeconfig context to deploy into)"
        )
    return out


def _rfc3339(value: str) -> datetime | None:
    """A UTC "Zulu" time; GKE returns UTC, so another offset would show as a permanent diff."""
    if not value.endswith("Z"):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _maintenance_problems(c: StackConfig) -> list[str]:
    """GKE's rules for maintenance policies (cloud.google.com/kubernetes-engine/docs/maintenance-window)."""
    out = []
    m = c.cluster.maintenance
    if m.window is not None:
        w = m.window
        start, end = _rfc3339(w.start_time), _rfc3339(w.end_time)
        if start is None or end is None:
            out.append(
                "cluster.maintenance.window: start_time and end_time must be RFC 3339 in UTC, "
                "e.g. 2025-01-04T02:00:00Z (GKE returns UTC; another offset is a permanent diff)"
            )
        elif end <= start:
            out.append("cluster.maintenance.window: end_time must be after start_time")
        else:
            hours = (end - start).total_seconds() / 3600
            rule = dict(part.split("=", 1) for part in w.recurrence.split(";") if "=" in part)
            days = len(rule.get("BYDAY", "").split(",")) if rule.get("BYDAY") else 1
            per_32_days = {"DAILY": 32, "WEEKLY": 4 * days}.get(rule.get("FREQ", ""))
            if per_32_days is None:
                out.append(
                    f"cluster.maintenance.window.recurrence: {w.recurrence!r} must be an RRULE with "
                    "FREQ=DAILY or FREQ=WEEKLY (e.g. FREQ=WEEKLY;BYDAY=SA,SU)"
                )
            elif hours < 4 or hours * per_32_days < 48:
                out.append(
                    f"cluster.maintenance.window: {hours:g} h x {per_32_days} windows per 32 days; GKE "
                    "needs at least 48 h in 32 days, in windows of at least 4 h (lengthen it or add days)"
                )
    for i, e in enumerate(m.exclusions):
        start, end = _rfc3339(e.start_time), _rfc3339(e.end_time)
        where = f"cluster.maintenance.exclusions[{i}]"
        if start is None or end is None:
            out.append(f"{where}: start_time and end_time must be RFC 3339 in UTC, e.g. 2025-11-20T00:00:00Z")
        elif end <= start:
            out.append(f"{where}: end_time must be after start_time")
        elif e.scope == "NO_UPGRADES" and end - start > timedelta(days=30):
            out.append(f"{where}: a NO_UPGRADES exclusion lasts at most 30 days (use NO_MINOR_UPGRADES)")
    return out


def network_rules(c: StackConfig) -> list[str]:
    out: list[str] = []
    n = c.network
    if not c.cluster.create:
        if n.model_fields_set:
            out.append("network: only for a cluster the stack creates (cluster.create: true); remove it")
        return out
    if not n.create and (n.name is None or n.subnetwork is None):
        out.append("network.name, network.subnetwork: required with network.create: false (your VPC's names)")
    if n.create:
        ranges = {"nodes_cidr": n.nodes_cidr, "pods_cidr": n.pods_cidr, "services_cidr": n.services_cidr}
        parsed = {}
        for field, cidr in ranges.items():
            try:
                parsed[field] = ipaddress.ip_network(cidr)
            except ValueError:
                out.append(f"network.{field}: {cidr!r} is not an IPv4 CIDR like 10.10.0.0/20")
        fields = sorted(parsed)
        for i, a in enumerate(fields):
            for b in fields[i + 1 :]:
                if parsed[a].overlaps(parsed[b]):
                    out.append(f"network.{a}: {ranges[a]} overlaps network.{b} ({ranges[b]})")
    for field in ("name", "subnetwork", "pods_range_name", "services_range_name"):
        value = getattr(n, field)
        if value is not None and not DNS_LABEL.match(value):
            out.append(f"network.{field}: {value!r} must be a lowercase name (a-z, 0-9, '-')")
    for i, an in enumerate(n.master_authorized_networks):
        try:
            ipaddress.ip_network(an.cidr_block)
        except ValueError:
            out.append(f"network.master_authorized_networks[{i}].cidr_block: {an.cidr_block!r} is not a CIDR")
    return out


def tpu_rules(c: StackConfig) -> list[str]:
    out = []
    gen, t = c.generation, c.tpu
    if gen.machine_type(t.machine_type) is None:
        names = ", ".join(m.name for m in gen.machine_types)
        out.append(
            f"tpu.machine_type: {t.machine_type!r} is not a {gen.name} machine type; use one of {names}"
        )
    elif t.topology not in gen.topologies:
        out.append(
            f"tpu.topology: {t.topology!r} is not a {gen.name} topology; "
            f"use one of {', '.join(gen.topologies)}"
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
    if t.capacity == "flex-start":
        if not c.cluster.create:
            out.append("tpu.capacity: flex-start needs cluster.create: true (the stack creates the pools)")
        if c.cluster.zone not in gen.flex_start_zones and not t.allow_unlisted_zone:
            out.append(
                f"tpu.capacity: flex-start {gen.name} is not offered in {c.cluster.zone}; use one of "
                f"{', '.join(gen.flex_start_zones)} ({catalog.FLEX_START_SOURCE}; or set "
                "tpu.allow_unlisted_zone: true if Google now offers it there)"
            )
    elif t.max_run_duration_hours is not None:
        out.append("tpu.max_run_duration_hours: only used with tpu.capacity: flex-start; remove it")
    return out


def model_rules(c: StackConfig) -> list[str]:
    out = []
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
    out += _tokenizer_problems(c, spec)
    return out


def _tokenizer_problems(c: StackConfig, spec: catalog.ModelSpec | None) -> list[str]:
    """Each engine has its own tokenizer field; the other engine's is an error, not ignored."""
    m = c.model
    if c.serving.engine == "inference-app" and m.tokenizer_path is not None:
        return [
            "model.tokenizer_path: MaxText's tokenizer flag, only used by engine jetstream-maxtext; remove "
            "it (inference-app reads the tokenizer of a Hugging Face or GGUF checkpoint, and of a MaxText "
            "checkpoint from model.hf_tokenizer_path)"
        ]
    path = m.hf_tokenizer_path
    if path is None:
        return []
    if c.serving.engine != "inference-app":
        return [
            "model.hf_tokenizer_path: only used by engine inference-app (jetstream-maxtext reads "
            "model.tokenizer_path); remove it"
        ]
    if (problem := gcs_path_problem(path)) is not None:
        return [f"model.hf_tokenizer_path: {problem}"]
    if m.checkpoint.endswith(".gguf"):
        return ["model.hf_tokenizer_path: a GGUF checkpoint carries its own tokenizer; remove it"]
    if spec is not None and spec.maxtext_name is None:
        return [
            f"model.hf_tokenizer_path: goes with a MaxText checkpoint, and {spec.name} has no MaxText "
            "architecture; remove it (its Hugging Face or GGUF checkpoint carries the tokenizer)"
        ]
    return []


def _parallelism_problems(c: StackConfig) -> list[str]:
    s = c.serving
    par = [s.parallelism.fsdp, s.parallelism.autoregressive, s.parallelism.tensor]
    if any(v == 0 or v < -1 for v in par):
        return ["serving.parallelism: each of fsdp, autoregressive, tensor must be >= 1 or -1 (fill)"]
    if par.count(-1) > 1:
        return ["serving.parallelism: at most one of fsdp, autoregressive, tensor may be -1"]
    if not _shape_ok(c):
        return []
    chips = c.chips_per_slice
    fixed = 1
    for v in par:
        fixed *= v if v != -1 else 1
    engine = "each engine's slice" if s.mode == "disaggregated" else "the slice"
    if -1 in par and chips % fixed:
        return [
            f"serving.parallelism: {fixed} does not divide the {chips} chips of {engine}; -1 cannot fill it"
        ]
    if -1 not in par and fixed != chips:
        return [
            f"serving.parallelism: fsdp x autoregressive x tensor = {fixed}, but {engine} has {chips} chips "
            f"({c.tpu.topology}); make the product {chips} or set one of them to -1"
        ]
    return []


def _memory_problems(c: StackConfig) -> list[str]:
    """Weights + KV cache for every slot must fit one engine slice's usable HBM."""
    spec = catalog.MODELS.get(c.model.name)
    if not _shape_ok(c) or spec is None:
        return []
    needed, usable = c.memory_estimate_bytes
    if needed <= usable:
        return []
    gib, s = catalog.GIB, c.serving
    return [
        f"serving.per_device_batch_size: {spec.name} needs ~{needed / gib:.0f} GiB per engine "
        f"(weights {c.weight_bytes / gib:.0f} GiB + KV cache for {c.slots_per_engine} "
        f"slots x {s.max_target_length} tokens) but a {c.generation.name} {c.tpu.topology} slice has "
        f"~{usable / gib:.0f} GiB usable HBM; use a larger topology, int8 (model.quantization / "
        "quantize_kvcache), fewer slots or a shorter max_target_length"
    ]


def serving_rules(c: StackConfig) -> list[str]:
    out = []
    s = c.serving
    for field in ("namespace", "name", "service_name"):
        value = getattr(s, field)
        if not DNS_LABEL.match(value):
            out.append(f"serving.{field}: {value!r} must be a lowercase DNS label (a-z, 0-9, '-')")
    if s.max_prefill_predict_length >= s.max_target_length:
        out.append(
            f"serving.max_prefill_predict_length: {s.max_prefill_predict_length} must be < "
            f"serving.max_target_length ({s.max_target_length}); the target length includes the prompt"
        )
    out += _parallelism_problems(c)
    overlap = set(s.maxtext_extra_args) & set(GENERATED_MAXTEXT_KEYS)
    if overlap:
        out.append(
            f"serving.maxtext_extra_args: {', '.join(sorted(overlap))} are generated from the typed config; "
            "set the typed field instead"
        )
    if s.engine == "inference-app" and s.maxtext_extra_args:
        out.append("serving.maxtext_extra_args: only used by engine jetstream-maxtext; remove it")
    if s.engine != "inference-app" and "drain_timeout_seconds" in s.model_fields_set:
        out.append(
            "serving.drain_timeout_seconds: only used by engine inference-app "
            "(JetStream has no drain flag); remove it"
        )
    if s.ready_timeout_seconds <= s.probes.startup_initial_delay_seconds:
        out.append(
            f"serving.ready_timeout_seconds: {s.ready_timeout_seconds} must exceed "
            f"serving.probes.startup_initial_delay_seconds ({s.probes.startup_initial_delay_seconds})"
        )
    out += _memory_problems(c)
    return out


def images_rules(c: StackConfig) -> list[str]:
    out = []
    for field in type(c.images).model_fields:
        image = getattr(c.images, field)
        if image is not None and (problem := image_problem(image)) is not None:
            out.append(f"images.{field}: {problem}")
    for field, image in (
        ("pathways_server", c.pathways_server_image),
        ("pathways_proxy", c.pathways_proxy_image),
    ):
        tag = image.rpartition(":")[2]
        if (
            c.serving.engine == "inference-app"
            and tag.startswith("jax-")
            and tag != f"jax-{c.pathways_jax_version}"
        ):
            out.append(
                f"images.{field}: {image} is built for {tag}, but serving.engine inference-app runs JAX "
                f"{c.pathways_jax_version}; the proxy must match the client's JAX (use the default)"
            )
    if c.images.inference_app is None:
        if c.serving.engine == "inference-app":
            out.append(
                "images.inference_app: required with serving.engine: inference-app (a pinned image tag)"
            )
        if c.batch_job.enabled:
            out.append(
                "images.inference_app: required with batch_job.enabled (the Job runs inference_app batch)"
            )
    return out


def lws_rules(c: StackConfig) -> list[str]:
    m = _LWS_VERSION.match(c.lws.version)
    if not m:
        return [f"lws.version: {c.lws.version!r} must look like v0.10.0"]
    if (int(m[1]), int(m[2])) < (0, 4):
        return [f"lws.version: {c.lws.version} predates subgroups and the v1 API we use; use >= v0.4.0"]
    return []


def storage_rules(c: StackConfig) -> list[str]:
    if (problem := bucket_name_problem(c.scratch_bucket)) is not None:
        return [f"storage.scratch_bucket: {problem}; set a shorter one"]
    return []


def autoscaling_rules(c: StackConfig) -> list[str]:
    out: list[str] = []
    a, s = c.autoscaling, c.serving
    if not a.enabled:
        return out
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
    generated = set(s.maxtext_extra_args) & set(AUTOSCALING_MAXTEXT_KEYS)
    if s.engine == "jetstream-maxtext" and generated:
        out.append(
            f"serving.maxtext_extra_args: {', '.join(sorted(generated))} is generated when "
            f"autoscaling.enabled (JetStream's exporter on port {catalog.JETSTREAM_METRICS_PORT}); remove it"
        )
    return out


def batch_job_rules(c: StackConfig) -> list[str]:
    out: list[str] = []
    b = c.batch_job
    if not b.enabled:
        return out
    for field in ("input", "output"):
        value = getattr(b, field)
        if value is None:
            out.append(f"batch_job.{field}: required when batch_job.enabled (a gs://bucket/path.jsonl)")
        elif (problem := gcs_path_problem(value)) is not None:
            out.append(f"batch_job.{field}: {problem}")
    if b.input is not None and b.input == b.output:
        out.append("batch_job.output: must differ from batch_job.input")
    if not DNS_LABEL.match(b.name):
        out.append(f"batch_job.name: {b.name!r} must be a lowercase DNS label")
    if b.max_tokens >= c.serving.max_target_length:
        out.append(
            f"batch_job.max_tokens: {b.max_tokens} must be < serving.max_target_length "
            f"({c.serving.max_target_length})"
        )
    return out


RULES: Final[tuple[Callable[[StackConfig], list[str]], ...]] = (
    stack_rules,
    cluster_rules,
    network_rules,
    tpu_rules,
    model_rules,
    serving_rules,
    images_rules,
    lws_rules,
    storage_rules,
    autoscaling_rules,
    batch_job_rules,
)


def problems(c: StackConfig) -> list[str]:
    """Every rule violated by `c`, section by section."""
    return [p for rule in RULES for p in rule(c)]


# ------------------------------------------------------------------------------- placeholders

# The stack files ship `your-...` values (project, checkpoint bucket); they must never reach GCP.
_PLACEHOLDER = re.compile(r"(?:^|[/:.@])your-[a-z0-9-]*")


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}[{i}]")


def placeholders(c: StackConfig) -> dict[str, str]:
    """Config paths (`project`, `model.checkpoint`, ...) whose value is still a `your-...` placeholder."""
    return {
        path: value
        for path, value in _strings(c.model_dump(exclude={"stack"}), "")
        if _PLACEHOLDER.search(value)
    }


def placeholder_problems(c: StackConfig) -> list[str]:
    """Every value still a placeholder, with the command that sets it."""
    out = []
    for path, value in placeholders(c).items():
        if path == "project":
            out.append(f"gcp:project: {value!r} is a placeholder; run: pulumi config set gcp:project <id>")
        else:
            out.append(
                f"{path}: {value!r} is a placeholder; run: pulumi config set --path "
                f"'tpu-pathways-inference:{path}' <value>"
            )
    return out
