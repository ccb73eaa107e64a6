"""The GKE cluster (or an existing one) and the explicit Kubernetes provider every k8s object uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s

from components import catalog
from components.config import StackConfig
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
    config: StackConfig


class GkeCluster(pulumi.ComponentResource):
    """Creates the cluster (default pool removed, CPU system pool, Workload Identity) or adopts one.

    Either way it exposes `provider`, the Kubernetes provider (server-side apply) that every
    Kubernetes resource of the stack is created with.
    """

    cluster_name: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    provider: k8s.Provider

    def __init__(self, name: str, args: GkeClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tpu-pathways-inference:index:GkeCluster", name, None, opts)
        c = args.config
        if c.cluster.create:
            self.cluster_name, self.kubeconfig, ready = self._create(name, c)
            provider_kubeconfig: pulumi.Input[str] | None = self.kubeconfig
            context = None
        else:
            path = c.cluster.kubeconfig_path
            text = Path(path).expanduser().read_text() if path is not None else ""
            self.cluster_name = pulumi.Output.from_input(c.cluster.name)
            self.kubeconfig = pulumi.Output.secret(text)
            provider_kubeconfig = self.kubeconfig if path is not None else None
            context = c.cluster.context
            ready = []
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=provider_kubeconfig,
            context=context,
            enable_server_side_apply=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=ready),
        )
        self.register_outputs({"cluster_name": self.cluster_name, "kubeconfig": self.kubeconfig})

    def _create(
        self, name: str, c: StackConfig
    ) -> tuple[pulumi.Output[str], pulumi.Output[str], list[pulumi.Resource]]:
        child = pulumi.ResourceOptions(parent=self)
        system_sa = ServiceAccount(
            f"{name}-system-nodes",
            ServiceAccountArgs(
                project=c.project,
                account_id=c.service_account_id("system-nodes"),
                display_name=f"GKE system nodes ({c.stack})",
                project_roles=catalog.NODE_SA_PROJECT_ROLES,
            ),
            opts=child,
        )
        node_basics: dict[str, Any] = {
            "service_account": system_sa.email,
            "oauth_scopes": ["https://www.googleapis.com/auth/cloud-platform"],
            "workload_metadata_config": {"mode": "GKE_METADATA"},
            "shielded_instance_config": {"enable_secure_boot": True, "enable_integrity_monitoring": True},
        }
        cluster_inputs: dict[str, Any] = {
            "name": c.cluster.name,
            "project": c.project,
            "location": c.cluster.zone,
            "remove_default_node_pool": True,
            "initial_node_count": 1,
            # The throwaway default pool also avoids the default compute service account.
            "node_config": node_basics,
            "release_channel": {"channel": c.cluster.release_channel},
            "min_master_version": c.min_master_version,
            "workload_identity_config": {"workload_pool": f"{c.project}.svc.id.goog"},
            "networking_mode": "VPC_NATIVE",
            "ip_allocation_policy": {},
            "deletion_protection": c.cluster.deletion_protection,
            "resource_labels": {"managed-by": "pulumi", "stack": c.stack},
        }
        cluster = gcp.container.Cluster(f"{name}-cluster", opts=child, **cluster_inputs)
        pool_inputs: dict[str, Any] = {
            "name": "system",
            "project": c.project,
            "location": c.cluster.zone,
            "node_count": c.cluster.system_pool.node_count,
            "management": {"auto_repair": True, "auto_upgrade": True},
            "node_config": {**node_basics, "machine_type": c.cluster.system_pool.machine_type},
        }
        system_pool = gcp.container.NodePool(
            f"{name}-system-pool", cluster=cluster.name, opts=child, **pool_inputs
        )
        plain: pulumi.Output[str] = pulumi.Output.all(
            cluster.name, cluster.endpoint, cluster.master_auth.cluster_ca_certificate
        ).apply(lambda parts: kubeconfig_for(str(parts[0]), str(parts[1]), str(parts[2])))
        kubeconfig: pulumi.Output[str] = pulumi.Output.secret(plain)
        return cluster.name, kubeconfig, [system_pool]
