"""Build the argument bags the Pulumi engine hands to a policy, and collect what it reports."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pulumi_policy import PolicyCustomTimeouts, PolicyResourceOptions, ResourceValidationArgs
from pulumi_policy.proxy import unknown_checking_proxy

from policy.policies import POLICIES


def resource_args(
    resource_type: str,
    props: Mapping[str, Any],
    *,
    stack: str = "prod",
    name: str = "res",
    config: Mapping[str, Any] | None = None,
) -> ResourceValidationArgs:
    """ResourceValidationArgs as the policy analyzer builds them, for a resource in `stack`.

    Props go through the SDK's unknown-checking proxy (Mapping/Sequence wrappers that raise on
    values unknown during preview), exactly as in a real pack run.
    """
    opts = PolicyResourceOptions(
        protect=False,
        ignore_changes=[],
        delete_before_replace=None,
        aliases=[],
        custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
        additional_secret_outputs=[],
    )
    urn = f"urn:pulumi:{stack}::tpu-inference::{resource_type}::{name}"
    return ResourceValidationArgs(
        resource_type, unknown_checking_proxy(dict(props)), urn, name, opts, None, config or {}
    )


def violations(policy_name: str, args: ResourceValidationArgs) -> list[str]:
    """Run one policy of the pack on `args`; the messages it reported."""
    (policy,) = [p for p in POLICIES if p.name == policy_name]
    reported: list[str] = []

    def report(message: str, urn: str | None = None) -> None:
        reported.append(message)

    policy.validate(args, report)
    return reported


def all_violations(args: ResourceValidationArgs) -> dict[str, list[str]]:
    """Run every policy of the pack; only the policies that reported something."""
    found = {p.name: violations(p.name, args) for p in POLICIES}
    return {name: messages for name, messages in found.items() if messages}
