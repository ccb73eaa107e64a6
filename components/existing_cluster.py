"""An existing cluster the stack deploys into (`cluster.create: false`): only a Kubernetes provider.

Nothing is created in GCP here; the provider uses your kubeconfig file (or the ambient one) and the
named context. The rest of the stack is the same as with a created cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s


@dataclass
class ExistingClusterArgs:
    name: str  # informational: the cluster_name output
    context: str
    kubeconfig_path: str | None  # None: the provider's ambient kubeconfig


class ExistingCluster(pulumi.ComponentResource):
    cluster_name: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    provider: k8s.Provider
    ready: list[pulumi.Resource]

    def __init__(
        self, name: str, args: ExistingClusterArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        # Earlier versions registered this case as a GkeCluster; the alias keeps the provider's
        # URN, so an update does not replace every Kubernetes object of an existing deployment.
        alias = pulumi.Alias(type_="tpu-pathways-inference:index:GkeCluster")
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(aliases=[alias]))
        super().__init__("tpu-pathways-inference:index:ExistingCluster", name, None, opts)
        path = args.kubeconfig_path
        text = Path(path).expanduser().read_text() if path is not None else ""
        self.cluster_name = pulumi.Output.from_input(args.name)
        self.kubeconfig = pulumi.Output.secret(text)
        self.ready = []
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig if path is not None else None,
            context=args.context,
            enable_server_side_apply=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"cluster_name": self.cluster_name, "kubeconfig": self.kubeconfig})
