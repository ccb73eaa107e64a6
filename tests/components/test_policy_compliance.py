"""Our own stacks pass the project's guardrails (policy/checks.py) on the inputs the program registers."""

from __future__ import annotations

import pytest

from components.mocks import Recording
from policy import checks

from .conftest import STACKS, load_stack, stack_values
from .test_program import _everything, run_main

CASES = {**{s: (s, lambda s=s: stack_values(s)) for s in STACKS}, "dev-everything": ("dev", _everything)}


@pytest.fixture(scope="module")
def recordings() -> dict[str, Recording]:
    return {case: run_main(values(), stack) for case, (stack, values) in CASES.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_guardrail_violations(recordings: dict[str, Recording], case: str) -> None:
    rec = recordings[case]
    stack = CASES[case][0]
    problems: list[str] = []
    for r in rec.resources:
        p = r.inputs
        if r.type in checks.POD_SPEC_PATHS:
            problems += checks.unpinned_images(r.type, p)
        if r.type == "kubernetes:core/v1:Service":
            problems += checks.public_service_exposure(p)
        if r.type == "gcp:container/nodePool:NodePool":
            problems += checks.missing_tpu_taint(p) + checks.default_service_account(p)
        if r.type == "gcp:container/cluster:Cluster":
            problems += checks.cluster_pool_problems(p, checks.default_service_account)
            if load_stack(stack).environment == "production":
                problems += checks.missing_deletion_protection(p)
        if r.type == "gcp:storage/bucket:Bucket":
            problems += checks.public_bucket_problems(p)
    assert problems == []
    checked = {r.type for r in rec.resources} & {
        "gcp:container/nodePool:NodePool",
        "gcp:storage/bucket:Bucket",
        "kubernetes:core/v1:Service",
        "kubernetes:leaderworkerset.x-k8s.io/v1:LeaderWorkerSet",
    }
    assert len(checked) == 4  # the check above really saw the resources it guards
