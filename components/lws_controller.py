"""The LeaderWorkerSet controller, installed from its pinned release manifest (server-side apply).

The provider fetches `lws_manifest_url(version)` at deploy time, exactly the file the guide applies
with `kubectl apply --server-side`; nothing is downloaded when rendering or testing. Pulumi awaits
the controller Deployment, so a LeaderWorkerSet that depends on this component is only created
once the CRD and its webhook are serving.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components import catalog


@dataclass
class LwsControllerArgs:
    version: str
    install: bool  # false: the cluster already runs a compatible controller


class LwsController(pulumi.ComponentResource):
    version: pulumi.Output[str]
    manifest_url: pulumi.Output[str]

    def __init__(
        self, name: str, args: LwsControllerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("tpu-pathways-inference:index:LwsController", name, None, opts)
        url = catalog.lws_manifest_url(args.version)
        if args.install:
            k8s.yaml.v2.ConfigFile(f"{name}-manifest", file=url, opts=pulumi.ResourceOptions(parent=self))
        self.version = pulumi.Output.from_input(args.version)
        self.manifest_url = pulumi.Output.from_input(url if args.install else "")
        self.register_outputs({"version": self.version, "manifest_url": self.manifest_url})
