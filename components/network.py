"""The cluster's own VPC: a subnetwork with secondary ranges for pods and Services, and Cloud NAT.

Many organisations have no `default` network (or forbid using it), and private nodes need a NAT
gateway to reach anything outside Google's APIs (Private Google Access covers Artifact Registry and
GCS; the LWS controller's image comes from registry.k8s.io). With `network.create: false` the
stack uses your VPC and creates nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp


@dataclass
class NetworkArgs:
    project: str
    region: str  # the TPU zone's region
    network_name: str
    subnetwork_name: str
    nodes_cidr: str
    pods_cidr: str
    services_cidr: str
    pods_range_name: str
    services_range_name: str
    cloud_nat: bool


class Network(pulumi.ComponentResource):
    network: pulumi.Output[str]  # self link
    subnetwork: pulumi.Output[str]  # self link
    resources: list[pulumi.Resource]  # what the cluster waits for (subnetwork, NAT)

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tpu-pathways-inference:index:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        vpc = gcp.compute.Network(
            f"{name}-vpc",
            name=args.network_name,
            project=args.project,
            auto_create_subnetworks=False,
            routing_mode="REGIONAL",
            opts=child,
        )
        subnet = gcp.compute.Subnetwork(
            f"{name}-subnet",
            name=args.subnetwork_name,
            project=args.project,
            region=args.region,
            network=vpc.id,
            ip_cidr_range=args.nodes_cidr,
            # Nodes without public IPs still reach Artifact Registry and GCS (images, checkpoints).
            private_ip_google_access=True,
            secondary_ip_ranges=[
                {"range_name": args.pods_range_name, "ip_cidr_range": args.pods_cidr},
                {"range_name": args.services_range_name, "ip_cidr_range": args.services_cidr},
            ],
            opts=child,
        )
        self.resources = [subnet]
        if args.cloud_nat:
            router = gcp.compute.Router(
                f"{name}-router",
                name=f"{args.network_name}-router",
                project=args.project,
                region=args.region,
                network=vpc.id,
                opts=child,
            )
            nat = gcp.compute.RouterNat(
                f"{name}-nat",
                name=f"{args.network_name}-nat",
                project=args.project,
                region=args.region,
                router=router.name,
                nat_ip_allocate_option="AUTO_ONLY",
                source_subnetwork_ip_ranges_to_nat="ALL_SUBNETWORKS_ALL_IP_RANGES",
                log_config={"enable": True, "filter": "ERRORS_ONLY"},
                opts=child,
            )
            self.resources.append(nat)
        self.network = vpc.self_link
        self.subnetwork = subnet.self_link
        self.register_outputs({"network": self.network, "subnetwork": self.subnetwork})
