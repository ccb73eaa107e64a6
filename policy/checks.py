"""The guardrail rules as pure functions: resource inputs in, violation messages out.

Inputs are what the Pulumi engine passes to a policy pack: the provider schema's camelCase
property names (`nodeConfig.serviceAccount`, `placementPolicy.tpuTopology`), nested mappings and
lists. Each function returns one message per problem (empty list = compliant); every message
names the field and the fix, because it is what a reviewer reads in the PR preview comment.
Keeping the rules free of `pulumi_policy` makes them testable on plain dicts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

# --- Kubernetes workloads -------------------------------------------------------------------

# Where each workload kind keeps its pod specs (paths of keys from the resource's inputs).
POD_SPEC_PATHS: Mapping[str, tuple[tuple[str, ...], ...]] = {
    "kubernetes:core/v1:Pod": (("spec",),),
    "kubernetes:apps/v1:Deployment": (("spec", "template", "spec"),),
    "kubernetes:apps/v1:StatefulSet": (("spec", "template", "spec"),),
    "kubernetes:apps/v1:DaemonSet": (("spec", "template", "spec"),),
    "kubernetes:apps/v1:ReplicaSet": (("spec", "template", "spec"),),
    "kubernetes:batch/v1:Job": (("spec", "template", "spec"),),
    "kubernetes:batch/v1:CronJob": (("spec", "jobTemplate", "spec", "template", "spec"),),
    # pulumi-kubernetes types a CustomResource as `kubernetes:<apiVersion>:<kind>`.
    "kubernetes:leaderworkerset.x-k8s.io/v1:LeaderWorkerSet": (
        ("spec", "leaderWorkerTemplate", "leaderTemplate", "spec"),
        ("spec", "leaderWorkerTemplate", "workerTemplate", "spec"),
    ),
}

_CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}$")


def _get_path(obj: Any, path: Sequence[str]) -> Any:
    """Follow `path` through nested mappings; None as soon as a step is missing."""
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else []


def image_reference_problem(image: Any) -> str | None:
    """Why an image reference is not pinned, or None when it is.

    Pinned means a digest (`@sha256:...`) or an explicit tag other than `latest`. An untagged
    reference is pulled as `:latest` by the container runtime, so it is refused too.
    """
    if not isinstance(image, str) or not image.strip():
        return "has no image reference"
    if "@" in image:
        digest = image.split("@", 1)[1]
        return None if _DIGEST.match(digest) else f"has a malformed digest '{digest}'"
    last_component = image.rsplit("/", 1)[-1]
    if ":" not in last_component:
        return "is untagged (pulled as ':latest')"
    tag = last_component.split(":", 1)[1]
    if not tag:
        return "has an empty tag"
    if tag.lower() == "latest":
        return "uses the mutable ':latest' tag"
    return None


def iter_containers(resource_type: str, props: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Yield (location, container) for every container of a workload.

    e.g. ('workerTemplate.containers[0]', {...}).
    """
    for path in POD_SPEC_PATHS.get(resource_type, ()):
        pod_spec = _get_path(props, path)
        if not isinstance(pod_spec, Mapping):
            continue
        template = path[-2] if len(path) >= 2 else "pod"
        for list_name in _CONTAINER_LISTS:
            for index, container in enumerate(_as_list(pod_spec.get(list_name))):
                if isinstance(container, Mapping):
                    yield f"{template}.{list_name}[{index}]", container


def unpinned_images(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """Every container image of a workload must be pinned (tag other than latest, or digest)."""
    messages = []
    for location, container in iter_containers(resource_type, props):
        image = container.get("image")
        problem = image_reference_problem(image)
        if problem is not None:
            name = container.get("name", "?")
            messages.append(
                f"container '{name}' ({location}) image '{image}' {problem}; pin an explicit version tag "
                "or a digest (the stack's image settings default to pinned tags)."
            )
    return messages


# --- Services ---------------------------------------------------------------------------------

# GKE provisions an internal (VPC-only) passthrough load balancer when a LoadBalancer Service
# carries this annotation; the second key is the older spelling GKE still honours.
INTERNAL_LB_ANNOTATIONS: tuple[str, ...] = (
    "networking.gke.io/load-balancer-type",
    "cloud.google.com/load-balancer-type",
)


def public_service_exposure(props: Mapping[str, Any]) -> list[str]:
    """The model server must not be reachable from outside the VPC through its Service.

    NodePort opens the port on every node; a LoadBalancer without GKE's internal annotation gets
    an external IP; `externalIPs` routes traffic from arbitrary addresses. ClusterIP (reached with
    `kubectl port-forward` or an internal LB / Gateway you add deliberately) is the default.
    """
    spec = props.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    messages = []
    service_type = spec.get("type", "ClusterIP")
    if service_type == "NodePort":
        messages.append(
            "spec.type is NodePort, which exposes the model server on every node's address; "
            "use ClusterIP (the default) or an internal LoadBalancer."
        )
    elif service_type == "LoadBalancer":
        annotations = _get_path(props, ("metadata", "annotations"))
        annotations = annotations if isinstance(annotations, Mapping) else {}
        internal = any(str(annotations.get(key, "")).lower() == "internal" for key in INTERNAL_LB_ANNOTATIONS)
        if not internal:
            messages.append(
                "spec.type is LoadBalancer without the annotation "
                f"'{INTERNAL_LB_ANNOTATIONS[0]}: Internal', so GKE gives it a public IP; "
                "use ClusterIP or add the annotation for a VPC-internal load balancer."
            )
    if _as_list(spec.get("externalIPs")):
        messages.append("spec.externalIPs is set, which accepts traffic from outside the cluster; remove it.")
    return messages


# --- GKE node pools -----------------------------------------------------------------------------

# The taint GKE puts on TPU slice nodes, in the GKE API / pulumi-gcp spelling
# (`node_config.taints[].effect` takes NO_SCHEDULE, not Kubernetes' NoSchedule).
TPU_TAINT: Mapping[str, str] = {"key": "google.com/tpu", "value": "present", "effect": "NO_SCHEDULE"}

# Compute Engine TPU machine types: ct5lp-hightpu-4t (v5e), ct5p-hightpu-4t (v5p),
# ct6e-standard-4t (v6e), tpu7x-standard-4t (Ironwood). A naming rule, not a catalog: the catalog
# of supported shapes is components/catalog.py; the guardrail must also catch hand-written pools.
_TPU_MACHINE_TYPE = re.compile(r"^(ct\d+[a-z]*|tpu\d+[a-z]*)-")

DEFAULT_COMPUTE_SA_SUFFIX = "-compute@developer.gserviceaccount.com"


def is_tpu_pool(pool: Mapping[str, Any]) -> bool:
    """A node pool is a TPU pool when its machine type is a TPU type or it declares a TPU topology."""
    machine_type = _get_path(pool, ("nodeConfig", "machineType"))
    topology = _get_path(pool, ("placementPolicy", "tpuTopology"))
    return bool(topology) or (isinstance(machine_type, str) and bool(_TPU_MACHINE_TYPE.match(machine_type)))


def missing_tpu_taint(pool: Mapping[str, Any], where: str = "nodeConfig") -> list[str]:
    """TPU pools must declare the TPU taint so only pods that tolerate it land on TPU VMs.

    GKE adds this taint to TPU slice nodes itself; declaring it in the pool's inputs keeps it in
    the reviewed diff and in Pulumi's state instead of relying on an implicit server-side default
    (pulumi-gcp reports drift only on taints it manages).
    """
    if not is_tpu_pool(pool):
        return []
    taints = _as_list(_get_path(pool, ("nodeConfig", "taints")))
    for taint in taints:
        if isinstance(taint, Mapping) and all(taint.get(k) == v for k, v in TPU_TAINT.items()):
            return []
    wanted = ", ".join(f"{k}={v}" for k, v in TPU_TAINT.items())
    return [
        f"TPU node pool ({where}.machineType={_get_path(pool, ('nodeConfig', 'machineType'))}) "
        "lacks the TPU taint; "
        f"add {where}.taints entry {{{wanted}}}."
    ]


def default_service_account(pool: Mapping[str, Any], where: str = "nodeConfig") -> list[str]:
    """Nodes must run as a dedicated least-privilege service account, never the default compute SA.

    Unset means GKE uses the project's default compute service account (broad Editor rights in
    many projects), so unset is a violation too.
    """
    account = _get_path(pool, ("nodeConfig", "serviceAccount"))
    if not isinstance(account, str) or not account or account == "default":
        return [
            f"{where}.serviceAccount is unset, so nodes run as the default compute service account; "
            "set it to the stack's dedicated node service account."
        ]
    if account.endswith(DEFAULT_COMPUTE_SA_SUFFIX):
        return [
            f"{where}.serviceAccount is the default compute service account '{account}'; "
            "use a dedicated least-privilege node service account."
        ]
    return []


PoolRule = Callable[[Mapping[str, Any], str], list[str]]


def cluster_pool_problems(props: Mapping[str, Any], rule: PoolRule) -> list[str]:
    """A pool rule applied to the node pools a `gcp:container/cluster:Cluster` defines inline.

    The cluster's own `nodeConfig` describes its default pool; it only matters when that pool is
    kept (`removeDefaultNodePool` not true). Autopilot clusters have no user node pools.
    """
    if props.get("enableAutopilot") is True:
        return []
    messages: list[str] = []
    if props.get("removeDefaultNodePool") is not True:
        messages += rule(props, "nodeConfig")
    for index, pool in enumerate(_as_list(props.get("nodePools"))):
        if isinstance(pool, Mapping):
            messages += rule(pool, f"nodePools[{index}].nodeConfig")
    return messages


# --- Clusters and buckets ---------------------------------------------------------------------


def missing_deletion_protection(props: Mapping[str, Any]) -> list[str]:
    """A production cluster must say `deletionProtection: true` explicitly (not rely on a default)."""
    if props.get("deletionProtection") is True:
        return []
    return [
        f"deletionProtection is {props.get('deletionProtection')!r} on a production stack; set it to true "
        "(or list the stack in the policy's nonProductionStacks config if it is disposable)."
    ]


def public_bucket_problems(props: Mapping[str, Any]) -> list[str]:
    """Buckets must enforce public access prevention and uniform bucket-level access (no object ACLs)."""
    messages = []
    if props.get("publicAccessPrevention") != "enforced":
        messages.append(
            f"publicAccessPrevention is {props.get('publicAccessPrevention')!r} (unset means 'inherited'); "
            "set it to 'enforced'."
        )
    if props.get("uniformBucketLevelAccess") is not True:
        messages.append(
            f"uniformBucketLevelAccess is {props.get('uniformBucketLevelAccess')!r}; set it to true so "
            "access is governed by IAM only, not per-object ACLs."
        )
    return messages


# --- Stacks -----------------------------------------------------------------------------------


def stack_of_urn(urn: str) -> str:
    """The stack name in a resource URN `urn:pulumi:<stack>::<project>::<type>::<name>`."""
    prefix = "urn:pulumi:"
    if not urn.startswith(prefix) or "::" not in urn:
        raise ValueError(f"not a Pulumi resource URN: {urn!r}")
    return urn[len(prefix) :].split("::", 1)[0]
