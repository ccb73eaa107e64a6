"""The guardrails see real SDK resources the way the engine shows them to a policy pack.

Hand-written dicts can only prove the rules against our own idea of the property names. Here
pulumi-gcp and pulumi-kubernetes resources are registered under Pulumi's mocks, the inputs they
send to the engine (type token + camelCase props, the form a policy pack receives) are captured,
and the pack runs on those: a wrong key name or type token in policy/ fails these tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s
import pytest

from tests.policy.helpers import all_violations, resource_args

Captured = dict[str, tuple[str, Mapping[str, Any]]]


class _Recorder(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: Captured = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources[args.name] = (args.typ, args.inputs)
        return f"{args.name}-id", args.inputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
        raise AssertionError(f"unexpected invoke {args.token}")


def _capture(program: Callable[[], None]) -> Captured:
    recorder = _Recorder()
    pulumi.runtime.set_mocks(recorder, project="tpu-inference", stack="prod", preview=False)

    @pulumi.runtime.test
    def run() -> pulumi.Output[int]:
        program()
        return pulumi.Output.from_input(0)

    run()
    return recorder.resources


SA = "tpu-nodes@my-project.iam.gserviceaccount.com"
TPU_TAINT = gcp.container.NodePoolNodeConfigTaintArgs(
    key="google.com/tpu", value="present", effect="NO_SCHEDULE"
)


def _pod(image: str) -> dict[str, Any]:
    return {"containers": [{"name": "main", "image": image}]}


def _program() -> None:
    # Compliant resources, shaped like the stack's components build them.
    gcp.container.Cluster(
        "good-cluster",
        deletion_protection=True,
        remove_default_node_pool=True,
        initial_node_count=1,
        node_config=gcp.container.ClusterNodeConfigArgs(service_account=SA),
    )
    gcp.container.NodePool(
        "good-tpu-pool",
        cluster="c",
        node_count=4,
        node_config=gcp.container.NodePoolNodeConfigArgs(
            machine_type="ct6e-standard-4t", service_account=SA, taints=[TPU_TAINT]
        ),
        placement_policy=gcp.container.NodePoolPlacementPolicyArgs(type="COMPACT", tpu_topology="4x4"),
    )
    gcp.storage.Bucket(
        "good-bucket",
        location="US-CENTRAL1",
        uniform_bucket_level_access=True,
        public_access_prevention="enforced",
    )
    k8s.core.v1.Service(
        "good-svc",
        spec=k8s.core.v1.ServiceSpecArgs(type="ClusterIP", ports=[k8s.core.v1.ServicePortArgs(port=8000)]),
    )
    k8s.apiextensions.CustomResource(
        "good-lws",
        api_version="leaderworkerset.x-k8s.io/v1",
        kind="LeaderWorkerSet",
        spec={
            "leaderWorkerTemplate": {
                "size": 5,
                "leaderTemplate": {"spec": _pod("app:0.1.0")},
                "workerTemplate": {"spec": _pod("worker:v1")},
            }
        },
    )
    # The same concepts, each breaking its guardrail.
    gcp.container.Cluster("bad-cluster", deletion_protection=False, initial_node_count=1)
    gcp.container.NodePool(
        "bad-tpu-pool",
        cluster="c",
        node_count=1,
        node_config=gcp.container.NodePoolNodeConfigArgs(
            machine_type="ct6e-standard-8t", service_account="1-compute@developer.gserviceaccount.com"
        ),
    )
    gcp.storage.Bucket("bad-bucket", location="US")
    k8s.core.v1.Service(
        "bad-svc",
        spec=k8s.core.v1.ServiceSpecArgs(type="LoadBalancer", ports=[k8s.core.v1.ServicePortArgs(port=8000)]),
    )
    k8s.apiextensions.CustomResource(
        "bad-lws",
        api_version="leaderworkerset.x-k8s.io/v1",
        kind="LeaderWorkerSet",
        spec={
            "leaderWorkerTemplate": {
                "size": 5,
                "leaderTemplate": {"spec": _pod("app:latest")},
                "workerTemplate": {"spec": _pod("worker")},
            }
        },
    )
    k8s.apps.v1.Deployment(
        "bad-deployment",
        spec=k8s.apps.v1.DeploymentSpecArgs(
            selector=k8s.meta.v1.LabelSelectorArgs(match_labels={"app": "x"}),
            template=k8s.core.v1.PodTemplateSpecArgs(
                metadata=k8s.meta.v1.ObjectMetaArgs(labels={"app": "x"}),
                spec=k8s.core.v1.PodSpecArgs(containers=[k8s.core.v1.ContainerArgs(name="c", image="nginx")]),
            ),
        ),
    )
    k8s.batch.v1.Job(
        "bad-job",
        spec=k8s.batch.v1.JobSpecArgs(
            template=k8s.core.v1.PodTemplateSpecArgs(
                spec=k8s.core.v1.PodSpecArgs(
                    restart_policy="Never",
                    containers=[k8s.core.v1.ContainerArgs(name="c", image="busybox:latest")],
                ),
            ),
        ),
    )


@pytest.fixture(scope="module")
def captured() -> Iterator[Captured]:
    yield _capture(_program)


def _verdict(captured: Captured, name: str) -> dict[str, list[str]]:
    resource_type, props = captured[name]
    return all_violations(resource_args(resource_type, props, stack="prod", name=name))


def test_type_tokens_are_the_ones_the_policies_filter_on(captured: Captured) -> None:
    assert captured["good-cluster"][0] == "gcp:container/cluster:Cluster"
    assert captured["good-tpu-pool"][0] == "gcp:container/nodePool:NodePool"
    assert captured["good-bucket"][0] == "gcp:storage/bucket:Bucket"
    assert captured["good-svc"][0] == "kubernetes:core/v1:Service"
    assert captured["good-lws"][0] == "kubernetes:leaderworkerset.x-k8s.io/v1:LeaderWorkerSet"
    assert captured["bad-deployment"][0] == "kubernetes:apps/v1:Deployment"
    assert captured["bad-job"][0] == "kubernetes:batch/v1:Job"


@pytest.mark.parametrize("name", ["good-cluster", "good-tpu-pool", "good-bucket", "good-svc", "good-lws"])
def test_compliant_sdk_resources_pass_every_policy(captured: Captured, name: str) -> None:
    assert _verdict(captured, name) == {}


@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "bad-cluster",
            {"production-cluster-deletion-protection": 1, "no-default-compute-service-account": 1},
        ),
        ("bad-tpu-pool", {"tpu-pools-tainted": 1, "no-default-compute-service-account": 1}),
        ("bad-bucket", {"buckets-not-public": 2}),
        ("bad-svc", {"no-public-model-service": 1}),
        ("bad-lws", {"pinned-container-images": 2}),
        ("bad-deployment", {"pinned-container-images": 1}),
        ("bad-job", {"pinned-container-images": 1}),
    ],
)
def test_violating_sdk_resources_are_caught(captured: Captured, name: str, expected: dict[str, int]) -> None:
    found = _verdict(captured, name)
    assert {policy: len(messages) for policy, messages in found.items()} == expected
