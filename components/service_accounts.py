"""A dedicated, least-privilege GCP service account (never the default compute SA)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_gcp as gcp


@dataclass
class ServiceAccountArgs:
    project: pulumi.Input[str]
    account_id: str  # 6-30 chars, [a-z][-a-z0-9]*[a-z0-9]
    display_name: str
    project_roles: tuple[str, ...] = field(default_factory=tuple)


class ServiceAccount(pulumi.ComponentResource):
    """The account plus its project-level role bindings (bucket grants live with the buckets)."""

    email: pulumi.Output[str]
    member: pulumi.Output[str]
    bindings: list[pulumi.Resource]  # its project roles: nodes must not boot before they propagate

    def __init__(
        self, name: str, args: ServiceAccountArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("tpu-pathways-inference:index:ServiceAccount", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        account = gcp.serviceaccount.Account(
            f"{name}-account",
            project=args.project,
            account_id=args.account_id,
            display_name=args.display_name,
            opts=child,
        )
        self.bindings = [
            gcp.projects.IAMMember(
                f"{name}-{role.rsplit('/', 1)[-1]}",
                project=args.project,
                role=role,
                member=account.member,
                opts=child,
            )
            for role in args.project_roles
        ]
        self.email = account.email
        self.member = account.member
        self.register_outputs({"email": self.email, "member": self.member})
