"""Each guardrail against compliant and violating resource inputs (engine wire form: camelCase)."""

from __future__ import annotations

from typing import Any

import pytest

from policy import checks
from policy.policies import (
    BUCKET,
    CLUSTER,
    NODE_POOL,
    POLICIES,
    SERVICE,
)
from tests.policy.helpers import all_violations, resource_args, violations

GOOD_SA = "tpu-nodes@my-project.iam.gserviceaccount.com"
DEFAULT_SA = "123456789012-compute@developer.gserviceaccount.com"
TPU_TAINT = {"key": "google.com/tpu", "value": "present", "effect": "NO_SCHEDULE"}


def tpu_pool(**node_config: Any) -> dict[str, Any]:
    config = {"machineType": "ct6e-standard-4t", "serviceAccount": GOOD_SA, "taints": [TPU_TAINT]}
    config.update(node_config)
    return {
        "cluster": "c",
        "nodeCount": 4.0,
        "nodeConfig": config,
        "placementPolicy": {"type": "COMPACT", "tpuTopology": "4x4"},
    }


def test_pack_has_the_six_guardrails_with_unique_names() -> None:
    names = [p.name for p in POLICIES]
    assert len(set(names)) == len(names) == 6


# --- no-public-model-service --------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, annotations",
    [
        ({"type": "ClusterIP", "ports": [{"port": 8000.0}]}, {}),
        ({"ports": [{"port": 8000.0}]}, {}),  # type defaults to ClusterIP
        ({"type": "LoadBalancer"}, {"networking.gke.io/load-balancer-type": "Internal"}),
        ({"type": "LoadBalancer"}, {"cloud.google.com/load-balancer-type": "Internal"}),
        ({"clusterIP": "None"}, {}),  # headless, as LWS uses for its pods
    ],
)
def test_service_private_passes(spec: dict[str, Any], annotations: dict[str, str]) -> None:
    props = {"apiVersion": "v1", "kind": "Service", "metadata": {"annotations": annotations}, "spec": spec}
    assert violations("no-public-model-service", resource_args(SERVICE, props)) == []


@pytest.mark.parametrize(
    "spec, annotations, fragment",
    [
        (
            {"type": "LoadBalancer"},
            {},
            "without the annotation 'networking.gke.io/load-balancer-type: Internal'",
        ),
        ({"type": "LoadBalancer"}, {"networking.gke.io/load-balancer-type": "External"}, "public IP"),
        ({"type": "NodePort"}, {}, "NodePort"),
        ({"type": "ClusterIP", "externalIPs": ["203.0.113.7"]}, {}, "externalIPs"),
    ],
)
def test_service_public_is_a_violation(
    spec: dict[str, Any], annotations: dict[str, str], fragment: str
) -> None:
    props = {"metadata": {"name": "jetstream-svc", "annotations": annotations}, "spec": spec}
    (message,) = violations("no-public-model-service", resource_args(SERVICE, props, name="jetstream-svc"))
    assert fragment in message
    assert message.startswith("jetstream-svc: ")


# --- pinned-container-images --------------------------------------------------------------------


@pytest.mark.parametrize(
    "image, problem",
    [
        ("us-docker.pkg.dev/cloud-tpu-images/inference/jetstream-http:v0.2.3", None),
        ("localhost:5000/app:1.2", None),  # a registry port is not a tag
        ("python:3.11-slim@sha256:" + "a" * 64, None),
        ("ghcr.io/org/app@sha256:" + "0123456789abcdef" * 4, None),
        ("localhost:5000/app", "is untagged (pulled as ':latest')"),
        ("us-docker.pkg.dev/p/r/server", "is untagged (pulled as ':latest')"),
        ("busybox:latest", "uses the mutable ':latest' tag"),
        ("busybox:LATEST", "uses the mutable ':latest' tag"),
        ("busybox:", "has an empty tag"),
        ("busybox@sha256:xyz", "has a malformed digest 'sha256:xyz'"),
        ("", "has no image reference"),
        (None, "has no image reference"),
    ],
)
def test_image_reference_problem(image: Any, problem: str | None) -> None:
    assert checks.image_reference_problem(image) == problem


def lws(leader_image: str, worker_image: str, init_image: str = "busybox:1.36") -> dict[str, Any]:
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "spec": {
            "leaderWorkerTemplate": {
                "size": 5.0,
                "leaderTemplate": {
                    "spec": {
                        "initContainers": [{"name": "init", "image": init_image}],
                        "containers": [
                            {
                                "name": "pathways-rm",
                                "image": "us-docker.pkg.dev/cloud-tpu-v2-images/pathways/server:jax-0.5.3",
                            },
                            {"name": "jax-tpu", "image": leader_image},
                        ],
                    }
                },
                "workerTemplate": {"spec": {"containers": [{"name": "worker", "image": worker_image}]}},
            }
        },
    }


LWS = "kubernetes:leaderworkerset.x-k8s.io/v1:LeaderWorkerSet"


def test_lws_with_pinned_images_passes() -> None:
    props = lws(
        "example/inference-app:0.1.0", "us-docker.pkg.dev/cloud-tpu-v2-images/pathways/server:jax-0.5.3"
    )
    assert violations("pinned-container-images", resource_args(LWS, props)) == []


def test_lws_reports_every_unpinned_container_with_its_location() -> None:
    props = lws("example/inference-app:latest", "pathways/server", init_image="busybox")
    messages = violations("pinned-container-images", resource_args(LWS, props, name="llm"))
    assert len(messages) == 3
    assert any("'init' (leaderTemplate.initContainers[0])" in m and "untagged" in m for m in messages)
    assert any("'jax-tpu' (leaderTemplate.containers[1])" in m and ":latest" in m for m in messages)
    assert any("'worker' (workerTemplate.containers[0])" in m and "untagged" in m for m in messages)


@pytest.mark.parametrize(
    "resource_type, wrap",
    [
        ("kubernetes:apps/v1:Deployment", lambda pod: {"spec": {"template": {"spec": pod}}}),
        ("kubernetes:apps/v1:StatefulSet", lambda pod: {"spec": {"template": {"spec": pod}}}),
        ("kubernetes:apps/v1:DaemonSet", lambda pod: {"spec": {"template": {"spec": pod}}}),
        ("kubernetes:batch/v1:Job", lambda pod: {"spec": {"template": {"spec": pod}}}),
        (
            "kubernetes:batch/v1:CronJob",
            lambda pod: {"spec": {"jobTemplate": {"spec": {"template": {"spec": pod}}}}},
        ),
        ("kubernetes:core/v1:Pod", lambda pod: {"spec": pod}),
    ],
)
def test_every_workload_kind_is_checked(resource_type: str, wrap: Any) -> None:
    pinned = wrap({"containers": [{"name": "c", "image": "registry.k8s.io/lws/lws:v0.6.1"}]})
    latest = wrap({"containers": [{"name": "c", "image": "registry.k8s.io/lws/lws:latest"}]})
    assert violations("pinned-container-images", resource_args(resource_type, pinned)) == []
    assert len(violations("pinned-container-images", resource_args(resource_type, latest))) == 1


def test_images_of_other_resource_types_are_ignored() -> None:
    props = {"data": {"image": "busybox:latest"}}
    assert violations("pinned-container-images", resource_args("kubernetes:core/v1:ConfigMap", props)) == []


# --- tpu-pools-tainted ----------------------------------------------------------------------------


def test_tpu_pool_with_taint_passes() -> None:
    assert violations("tpu-pools-tainted", resource_args(NODE_POOL, tpu_pool())) == []


@pytest.mark.parametrize(
    "taints",
    [
        [],
        [
            {"key": "google.com/tpu", "value": "present", "effect": "NoSchedule"}
        ],  # k8s spelling: wrong field value
        [{"key": "google.com/tpu", "value": "present", "effect": "PREFER_NO_SCHEDULE"}],
        [{"key": "google.com/tpu", "value": "true", "effect": "NO_SCHEDULE"}],
        [{"key": "dedicated", "value": "tpu", "effect": "NO_SCHEDULE"}],
    ],
)
def test_tpu_pool_without_the_exact_taint_is_a_violation(taints: list[dict[str, str]]) -> None:
    (message,) = violations("tpu-pools-tainted", resource_args(NODE_POOL, tpu_pool(taints=taints)))
    assert "key=google.com/tpu, value=present, effect=NO_SCHEDULE" in message


def test_pool_recognised_as_tpu_by_topology_alone() -> None:
    pool = tpu_pool(machineType="unknown-future-type", taints=[])
    assert violations("tpu-pools-tainted", resource_args(NODE_POOL, pool))


@pytest.mark.parametrize(
    "machine_type", ["ct5lp-hightpu-4t", "ct5p-hightpu-4t", "ct6e-standard-8t", "tpu7x-standard-4t"]
)
def test_single_host_tpu_machine_types_need_the_taint(machine_type: str) -> None:
    pool = {"nodeConfig": {"machineType": machine_type, "serviceAccount": GOOD_SA}}
    assert checks.is_tpu_pool(pool)
    assert violations("tpu-pools-tainted", resource_args(NODE_POOL, pool))


def test_cpu_pool_needs_no_taint() -> None:
    pool = {"nodeConfig": {"machineType": "e2-standard-4", "serviceAccount": GOOD_SA}}
    assert not checks.is_tpu_pool(pool)
    assert violations("tpu-pools-tainted", resource_args(NODE_POOL, pool)) == []


def test_cluster_inline_tpu_pool_is_checked() -> None:
    props = {
        "removeDefaultNodePool": True,
        "deletionProtection": True,
        "nodePools": [
            {"name": "tpu", "nodeConfig": {"machineType": "ct6e-standard-4t", "serviceAccount": GOOD_SA}}
        ],
    }
    (message,) = violations("tpu-pools-tainted", resource_args(CLUSTER, props))
    assert "nodePools[0].nodeConfig.taints" in message


# --- production-cluster-deletion-protection -----------------------------------------------------

CLUSTER_PROPS = {
    "removeDefaultNodePool": True,
    "initialNodeCount": 1.0,
    "nodeConfig": {"serviceAccount": GOOD_SA},
}


def test_production_cluster_with_deletion_protection_passes() -> None:
    props = {**CLUSTER_PROPS, "deletionProtection": True}
    assert (
        violations("production-cluster-deletion-protection", resource_args(CLUSTER, props, stack="prod"))
        == []
    )


@pytest.mark.parametrize("value", [False, None])
def test_production_cluster_without_deletion_protection_is_a_violation(value: bool | None) -> None:
    props = dict(CLUSTER_PROPS)
    if value is not None:
        props["deletionProtection"] = value
    (message,) = violations(
        "production-cluster-deletion-protection", resource_args(CLUSTER, props, stack="llama2-70b-disagg")
    )
    assert "set it to true" in message and "nonProductionStacks" in message


def test_dev_stack_is_non_production_by_default() -> None:
    props = {**CLUSTER_PROPS, "deletionProtection": False}
    assert (
        violations("production-cluster-deletion-protection", resource_args(CLUSTER, props, stack="dev")) == []
    )


def test_non_production_stacks_come_from_policy_config() -> None:
    props = {**CLUSTER_PROPS, "deletionProtection": False}
    config = {"nonProductionStacks": ["scratch"]}
    assert (
        violations(
            "production-cluster-deletion-protection",
            resource_args(CLUSTER, props, stack="scratch", config=config),
        )
        == []
    )
    # Configuring the list replaces the default: `dev` is production now.
    assert violations(
        "production-cluster-deletion-protection", resource_args(CLUSTER, props, stack="dev", config=config)
    )


def test_malformed_policy_config_names_the_key() -> None:
    args = resource_args(CLUSTER, CLUSTER_PROPS, config={"nonProductionStacks": "dev"})
    with pytest.raises(ValueError, match="'nonProductionStacks' must be a list of stack names"):
        violations("production-cluster-deletion-protection", args)


def test_stack_of_urn() -> None:
    assert checks.stack_of_urn("urn:pulumi:dev::tpu-inference::gcp:container/cluster:Cluster::c") == "dev"
    with pytest.raises(ValueError, match="not a Pulumi resource URN"):
        checks.stack_of_urn("dev::c")


# --- buckets-not-public -------------------------------------------------------------------------


def test_private_bucket_passes() -> None:
    props = {
        "location": "US-CENTRAL1",
        "publicAccessPrevention": "enforced",
        "uniformBucketLevelAccess": True,
    }
    assert violations("buckets-not-public", resource_args(BUCKET, props)) == []


@pytest.mark.parametrize(
    "props, count",
    [
        ({"uniformBucketLevelAccess": True}, 1),  # publicAccessPrevention unset = "inherited"
        ({"publicAccessPrevention": "inherited", "uniformBucketLevelAccess": True}, 1),
        ({"publicAccessPrevention": "enforced"}, 1),
        ({"publicAccessPrevention": "enforced", "uniformBucketLevelAccess": False}, 1),
        ({}, 2),
    ],
)
def test_bucket_without_both_protections_is_a_violation(props: dict[str, Any], count: int) -> None:
    assert len(violations("buckets-not-public", resource_args(BUCKET, props))) == count


# --- no-default-compute-service-account ---------------------------------------------------------


def test_dedicated_node_service_account_passes() -> None:
    assert violations("no-default-compute-service-account", resource_args(NODE_POOL, tpu_pool())) == []


@pytest.mark.parametrize(
    "account, fragment",
    [
        (None, "is unset"),
        ("", "is unset"),
        ("default", "is unset"),
        (DEFAULT_SA, "default compute service account"),
    ],
)
def test_default_node_service_account_is_a_violation(account: str | None, fragment: str) -> None:
    pool = tpu_pool()
    if account is None:
        del pool["nodeConfig"]["serviceAccount"]
    else:
        pool["nodeConfig"]["serviceAccount"] = account
    (message,) = violations("no-default-compute-service-account", resource_args(NODE_POOL, pool))
    assert fragment in message


def test_cluster_default_pool_counts_only_when_kept() -> None:
    kept = {"deletionProtection": True, "initialNodeCount": 1.0}
    removed = {**kept, "removeDefaultNodePool": True}
    assert violations("no-default-compute-service-account", resource_args(CLUSTER, kept))
    assert violations("no-default-compute-service-account", resource_args(CLUSTER, removed)) == []
    autopilot = {"enableAutopilot": True, "deletionProtection": True}
    assert violations("no-default-compute-service-account", resource_args(CLUSTER, autopilot)) == []


def test_a_compliant_tpu_pool_passes_every_policy() -> None:
    assert all_violations(resource_args(NODE_POOL, tpu_pool())) == {}
