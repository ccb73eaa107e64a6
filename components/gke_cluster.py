"""The GKE cluster the stack creates, and the explicit Kubernetes provider every k8s object uses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s

from components.config import SystemPoolConfig
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
class GkeClusterArgs:
    """What the cluster consumes: its own settings, the project, and labels; nothing of the workload."""

    project: str
    name: str
    location: str  # the cluster's zone
    release_channel: str
    min_master_version: str | None
    deletion_protection: bool
    system_pool: SystemPoolConfig
    system_service_account: ServiceAccountArgs  # the CPU system nodes' own least-privilege account
    labels: Mapping[str, str]


class GkeCluster(pulumi.ComponentResource):
    """Creates the cluster (default pool removed, CPU system pool, Workload Identity).

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
        cluster_inputs: dict[str, Any] = {
            "name": args.name,
            "project": args.project,
            "location": args.location,
            "remove_default_node_pool": True,
            "initial_node_count": 1,
            # The throwaway default pool also avoids the default compute service account.
            "node_config": node_basics,
            "release_channel": {"channel": args.release_channel},
            "min_master_version": args.min_master_version,
            "workload_identity_config": {"workload_pool": f"{args.project}.svc.id.goog"},
            "networking_mode": "VPC_NATIVE",
            "ip_allocation_policy": {},
            "deletion_protection": args.deletion_protection,
            "resource_labels": dict(args.labels),
        }
        cluster = gcp.container.Cluster(f"{name}-cluster", opts=child, **cluster_inputs)
        pool_inputs: dict[str, Any] = {
            "name": "system",
            "project": args.project,
            "location": args.location,
            "node_count": args.system_pool.node_count,
            "management": {"auto_repair": True, "auto_upgrade": True},
            "node_config": {**node_basics, "machine_type": args.system_pool.machine_type},
        }
        system_pool = gcp.container.NodePool(
            f"{name}-system-pool", cluster=cluster.name, opts=child, **pool_inputs
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
