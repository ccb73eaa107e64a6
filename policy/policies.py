"""The guardrails as `pulumi_policy` resource policies (the rules themselves are in policy.checks).

Each policy filters on resource type tokens, runs the pure check on `args.props` and reports one
violation per message. All are mandatory: a violation fails `pulumi preview`/`up`, so an unsafe
change is stopped before review. The production rule is configurable per pack run (see
`NON_PRODUCTION_STACKS_KEY`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

from policy import checks

PACK_NAME = "tpu-inference-guardrails"

NODE_POOL = "gcp:container/nodePool:NodePool"
CLUSTER = "gcp:container/cluster:Cluster"
BUCKET = "gcp:storage/bucket:Bucket"
SERVICE = "kubernetes:core/v1:Service"
WORKLOAD_TYPES: tuple[str, ...] = tuple(checks.POD_SPEC_PATHS)

# A stack is production unless its name is listed here (policy config). Safe by default: a new
# stack gets the production rules until someone declares it disposable.
NON_PRODUCTION_STACKS_KEY = "nonProductionStacks"
DEFAULT_NON_PRODUCTION_STACKS: tuple[str, ...] = ("dev",)

Check = Callable[[ResourceValidationArgs], Sequence[str]]


def _validator(
    types: Sequence[str], check: Check
) -> Callable[[ResourceValidationArgs, ReportViolation], None]:
    """Adapt a check to the `validate` callback: skip other types, report each message."""
    wanted = frozenset(types)

    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        if args.resource_type not in wanted:
            return
        for message in check(args):
            report_violation(f"{args.name}: {message}", None)

    return validate


def non_production_stacks(config: Mapping[str, Any]) -> frozenset[str]:
    """The configured disposable stacks; a wrong type is a config error naming the key."""
    value = config.get(NON_PRODUCTION_STACKS_KEY, list(DEFAULT_NON_PRODUCTION_STACKS))
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(
            f"policy config '{NON_PRODUCTION_STACKS_KEY}' must be a list of stack names, got {value!r}"
        )
    return frozenset(value)


def is_production(args: ResourceValidationArgs) -> bool:
    return checks.stack_of_urn(args.urn) not in non_production_stacks(args.get_config())


def _deletion_protection(args: ResourceValidationArgs) -> Sequence[str]:
    return checks.missing_deletion_protection(args.props) if is_production(args) else []


def _pool_check(rule: checks.PoolRule) -> Check:
    """Run a node-pool rule on a NodePool, or on each pool a Cluster defines inline."""

    def check(args: ResourceValidationArgs) -> Sequence[str]:
        if args.resource_type == NODE_POOL:
            return rule(args.props, "nodeConfig")
        return checks.cluster_pool_problems(args.props, rule)

    return check


POLICIES: list[ResourceValidationPolicy] = [
    ResourceValidationPolicy(
        name="no-public-model-service",
        description="Services (the model server's included) are ClusterIP or an internal load balancer: "
        "no NodePort, no public LoadBalancer, no externalIPs.",
        enforcement_level=EnforcementLevel.MANDATORY,
        validate=_validator((SERVICE,), lambda a: checks.public_service_exposure(a.props)),
    ),
    ResourceValidationPolicy(
        name="pinned-container-images",
        description="Every container image in a Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, "
        "CronJob or LeaderWorkerSet has an explicit tag other than 'latest', or a digest.",
        enforcement_level=EnforcementLevel.MANDATORY,
        validate=_validator(WORKLOAD_TYPES, lambda a: checks.unpinned_images(a.resource_type, a.props)),
    ),
    ResourceValidationPolicy(
        name="tpu-pools-tainted",
        description="TPU node pools declare the taint google.com/tpu=present:NO_SCHEDULE so that only TPU "
        "workloads schedule on TPU VMs.",
        enforcement_level=EnforcementLevel.MANDATORY,
        validate=_validator((NODE_POOL, CLUSTER), _pool_check(checks.missing_tpu_taint)),
    ),
    ResourceValidationPolicy(
        name="production-cluster-deletion-protection",
        description="GKE clusters of production stacks set deletionProtection: true.",
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=PolicyConfigSchema(
            properties={
                NON_PRODUCTION_STACKS_KEY: {
                    "type": "array",
                    "items": {"type": "string"},
                    "default": list(DEFAULT_NON_PRODUCTION_STACKS),
                    "description": "Stack names treated as disposable; every other stack is production.",
                }
            }
        ),
        validate=_validator((CLUSTER,), _deletion_protection),
    ),
    ResourceValidationPolicy(
        name="buckets-not-public",
        description="GCS buckets enforce public access prevention and uniform bucket-level access.",
        enforcement_level=EnforcementLevel.MANDATORY,
        validate=_validator((BUCKET,), lambda a: checks.public_bucket_problems(a.props)),
    ),
    ResourceValidationPolicy(
        name="no-default-compute-service-account",
        description=(
            "Node pools run as a dedicated service account, never the default compute service account."
        ),
        enforcement_level=EnforcementLevel.MANDATORY,
        validate=_validator((NODE_POOL, CLUSTER), _pool_check(checks.default_service_account)),
    ),
]
