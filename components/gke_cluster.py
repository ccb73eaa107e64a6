"""The GKE cluster the stack creates, and the explicit Kubernetes provider every k8s object uses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s

from components.config import AuthorizedNetwork, MaintenanceConfig, SystemPoolConfig
from components.service_accounts import ServiceAccount, ServiceAccountArgs


def kubeconfig_for(cluster_name: str, endpoint: str, ca_certificate: str) -> str:
    """A kubeconfig that authenticates with `gke-gcloud-auth-plugin` (no static credentials)."""
    ctx = f"gke_{cluster_name}"
    return f"""apiVersion: v1
kind: Config
clusters:
- name: {ctx}
  cluster:
    certificate-authority-data: {ca_certificate}
    server: https://{endpoint}
contexts:
- name: {ctx}
  context:
    cluster: {ctx}
    user: {ctx}
current-context: {ctx}
users:
- name: {ctx}
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: gke-gcloud-auth-plugin
      installHint: Install gke-gcloud-auth-plugin (gcloud components install gke-gcloud-auth-plugin)
      provideClusterInfo: true
"""


@dataclass
class ClusterNetworking:
    """Where the cluster's nodes and pods live, and who may reach its control plane."""

    network: pulumi.Input[str]
    subnetwork: pulumi.Input[str]
    pods_range_name: str
    services_range_name: str
    private_nodes: bool
    master_authorized_networks: Sequence[AuthorizedNetwork]
    after: Sequence[pulumi.Resource]  # e.g. the subnetwork and its NAT


@dataclass
class GkeClusterArgs:
    """What the cluster consumes: its own settings, the project, and labels; nothing of the workload."""

    project: str
    name: str
    location: str  # the control plane: the TPU zone, or its region (regional control plane)
    node_zone: str  # where the system pool (and the TPU pools) run
    release_channel: str
    min_master_version: str | None  # None: the channel's default version
    deletion_protection: bool
    system_pool: SystemPoolConfig
    system_service_account: ServiceAccountArgs  # the CPU system nodes' own least-privilege account
    maintenance: MaintenanceConfig
    networking: ClusterNetworking
    labels: Mapping[str, str]


# Cluster inputs that only shape the default node pool, which is deleted right after creation. GKE
# reports something else for them later, and the provider plans a replacement of the whole cluster
# for that (terraform-provider-google #12070, #17511), so later changes are ignored.
CREATE_ONLY_CLUSTER_INPUTS = ("nodeConfig", "initialNodeCount")


def maintenance_policy(m: MaintenanceConfig) -> dict[str, Any] | None:
    """The cluster's maintenance_policy input, or None to leave GKE's default (any time)."""
    policy: dict[str, Any] = {}
    if m.window is not None:
        policy["recurring_window"] = {
            "start_time": m.window.start_time,
            "end_time": m.window.end_time,
            "recurrence": m.window.recurrence,
        }
    if m.exclusions:
        policy["maintenance_exclusions"] = [
            {
                "exclusion_name": e.name,
                "start_time": e.start_time,
                "end_time": e.end_time,
                "exclusion_options": {"scope": e.scope},
            }
            for e in m.exclusions
        ]
    return policy or None


class GkeCluster(pulumi.ComponentResource):
    """Creates the cluster (default pool removed, CPU system pool, Workload Identity, managed Prometheus).

    Exposes `provider`, the Kubernetes provider (server-side apply) that every Kubernetes resource
    of the stack is created with, and `ready`: what must exist before the cluster's Workload
    Identity pool and nodes can be used.
    """

    cluster_name: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    provider: k8s.Provider
    ready: list[pulumi.Resource]

    def __init__(self, name: str, args: GkeClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tpu-pathways-inference:index:GkeCluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        system_sa = ServiceAccount(f"{name}-system-nodes", args.system_service_account, opts=child)
        node_basics: dict[str, Any] = {
            "service_account": system_sa.email,
            "oauth_scopes": ["https://www.googleapis.com/auth/cloud-platform"],
            "workload_metadata_config": {"mode": "GKE_METADATA"},
            "shielded_instance_config": {"enable_secure_boot": True, "enable_integrity_monitoring": True},
        }
        net = args.networking
        cluster_inputs: dict[str, Any] = {
            "name": args.name,
            "project": args.project,
            "location": args.location,
            "network": net.network,
            "subnetwork": net.subnetwork,
            "remove_default_node_pool": True,
            "initial_node_count": 1,
            # The throwaway default pool runs as the system account, so the project's default compute
            # account (disabled in many organisations) is never needed. Create-only: see above.
            "node_config": {k: node_basics[k] for k in ("service_account", "oauth_scopes")},
            "release_channel": {"channel": args.release_channel},
            "workload_identity_config": {"workload_pool": f"{args.project}.svc.id.goog"},
            "networking_mode": "VPC_NATIVE",
            "ip_allocation_policy": {
                "cluster_secondary_range_name": net.pods_range_name,
                "services_secondary_range_name": net.services_range_name,
            },
            # Managed Service for Prometheus: the autoscaler's PodMonitoring needs its collectors.
            "monitoring_config": {"managed_prometheus": {"enabled": True}},
            "deletion_protection": args.deletion_protection,
            "resource_labels": dict(args.labels),
        }
        if args.min_master_version is not None:
            cluster_inputs["min_master_version"] = args.min_master_version
        if args.location != args.node_zone:
            cluster_inputs["node_locations"] = [args.node_zone]  # the default pool: one zone, not three
        if net.private_nodes:
            cluster_inputs["private_cluster_config"] = {"enable_private_nodes": True}
        if net.master_authorized_networks:
            cluster_inputs["master_authorized_networks_config"] = {
                "cidr_blocks": [
                    {"cidr_block": n.cidr_block, "display_name": n.display_name}
                    for n in net.master_authorized_networks
                ]
            }
        if (policy := maintenance_policy(args.maintenance)) is not None:
            cluster_inputs["maintenance_policy"] = policy
        cluster = gcp.container.Cluster(
            f"{name}-cluster",
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[*system_sa.bindings, *net.after],
                ignore_changes=list(CREATE_ONLY_CLUSTER_INPUTS),
            ),
            **cluster_inputs,
        )
        pool_inputs: dict[str, Any] = {
            "name": "system",
            "project": args.project,
            "location": args.location,
            "node_locations": [args.node_zone],
            "node_count": args.system_pool.node_count,
            "management": {"auto_repair": True, "auto_upgrade": True},
            "upgrade_settings": {"strategy": "SURGE", "max_surge": 1, "max_unavailable": 0},
            "node_config": {**node_basics, "machine_type": args.system_pool.machine_type},
        }
        system_pool = gcp.container.NodePool(
            f"{name}-system-pool",
            cluster=cluster.name,
            opts=pulumi.ResourceOptions(parent=self, depends_on=system_sa.bindings),
            **pool_inputs,
        )
        plain: pulumi.Output[str] = pulumi.Output.all(
            cluster.name, cluster.endpoint, cluster.master_auth.cluster_ca_certificate
        ).apply(lambda parts: kubeconfig_for(str(parts[0]), str(parts[1]), str(parts[2])))
        self.cluster_name = cluster.name
        self.kubeconfig = pulumi.Output.secret(plain)
        self.ready = [cluster, system_pool]
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            enable_server_side_apply=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=self.ready),
        )
        self.register_outputs({"cluster_name": self.cluster_name, "kubeconfig": self.kubeconfig})
