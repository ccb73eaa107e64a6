"""The stacks we ship pass the guardrails, as `pulumi preview --policy-pack policy` would judge them.

Each stack file runs through the real `__main__.py` under the infra's recording mocks
(components.preview.run_stack); every registered resource's inputs then go through every policy.
A mutated copy of a real resource proves the checks bite on real data, not only on our fixtures.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import pytest
import yaml

from components.mocks import Recording
from components.preview import run_stack
from policy import checks
from policy.policies import CLUSTER, DEFAULT_NON_PRODUCTION_STACKS, NODE_POOL
from tests.policy.helpers import all_violations, resource_args

STACKS_DIR = Path(__file__).resolve().parents[2] / "stacks"
STACKS = sorted(
    p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in STACKS_DIR.glob("Pulumi.*.yaml")
)
ENVIRONMENT_KEY = "tpu-pathways-inference:environment"


@cache
def recording(stack: str) -> Recording:
    return run_stack(stack)


def test_there_are_stacks_to_check() -> None:
    assert len(STACKS) >= 3


@pytest.mark.parametrize("stack", STACKS)
def test_shipped_stack_passes_every_guardrail(stack: str) -> None:
    found = {}
    for r in recording(stack).resources:
        violations = all_violations(resource_args(r.type, r.inputs, stack=stack, name=r.name))
        if violations:
            found[f"{r.type} {r.name}"] = violations
    assert found == {}


@pytest.mark.parametrize("stack", STACKS)
def test_guardrails_had_something_to_check(stack: str) -> None:
    types = {r.type for r in recording(stack).resources}
    assert {CLUSTER, NODE_POOL, "gcp:storage/bucket:Bucket", "kubernetes:core/v1:Service"} <= types
    assert "kubernetes:leaderworkerset.x-k8s.io/v1:LeaderWorkerSet" in types
    assert any(checks.is_tpu_pool(r.inputs) for r in recording(stack).by_type(NODE_POOL))


@pytest.mark.parametrize("stack", STACKS)
def test_policy_production_rule_matches_the_stack_environment(stack: str) -> None:
    """The pack decides by stack name, the program by `environment`; they must agree, or CI's
    preview would block a stack the program considers disposable (or protect none)."""
    environment = yaml.safe_load((STACKS_DIR / f"Pulumi.{stack}.yaml").read_text())["config"][ENVIRONMENT_KEY]
    assert (environment == "development") == (stack in DEFAULT_NON_PRODUCTION_STACKS), (
        f"stack {stack!r} has environment {environment!r}: "
        "keep policy.policies.DEFAULT_NON_PRODUCTION_STACKS in step"
    )


def test_mutated_real_resources_are_caught() -> None:
    stack = "llama2-70b-disagg"
    rec = recording(stack)
    tpu_pool = copy.deepcopy(next(r for r in rec.by_type(NODE_POOL) if checks.is_tpu_pool(r.inputs)))
    tpu_pool.inputs["nodeConfig"]["taints"] = []
    tpu_pool.inputs["nodeConfig"]["serviceAccount"] = "123-compute@developer.gserviceaccount.com"
    found = all_violations(resource_args(NODE_POOL, tpu_pool.inputs, stack=stack))
    assert set(found) == {"tpu-pools-tainted", "no-default-compute-service-account"}

    cluster = copy.deepcopy(rec.one(CLUSTER))
    cluster.inputs["deletionProtection"] = False
    assert set(all_violations(resource_args(CLUSTER, cluster.inputs, stack=stack))) == {
        "production-cluster-deletion-protection"
    }

    service = copy.deepcopy(rec.one("kubernetes:core/v1:Service"))
    service.inputs["spec"]["type"] = "LoadBalancer"
    assert set(all_violations(resource_args("kubernetes:core/v1:Service", service.inputs, stack=stack))) == {
        "no-public-model-service"
    }

    lws_type = "kubernetes:leaderworkerset.x-k8s.io/v1:LeaderWorkerSet"
    lws = copy.deepcopy(rec.one(lws_type))
    worker = lws.inputs["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]
    worker["image"] = worker["image"].rsplit(":", 1)[0]  # drop the tag
    assert set(all_violations(resource_args(lws_type, lws.inputs, stack=stack))) == {
        "pinned-container-images"
    }

    bucket = copy.deepcopy(rec.one("gcp:storage/bucket:Bucket"))
    bucket.inputs["publicAccessPrevention"] = "inherited"
    assert set(all_violations(resource_args("gcp:storage/bucket:Bucket", bucket.inputs, stack=stack))) == {
        "buckets-not-public"
    }
