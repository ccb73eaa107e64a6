"""The Custom Metrics Stackdriver Adapter: what makes the autoscaler's metric readable by the HPA.

The HPA asks the Kubernetes custom (or external) metrics API; on GKE the adapter answers it from
Cloud Monitoring, where Managed Service for Prometheus stores what the PodMonitoring scrapes. The
adapter's Kubernetes service account reads Cloud Monitoring through Workload Identity
(`roles/monitoring.viewer`, granted to the KSA's principal directly). The manifest is Google's,
pinned to a commit (catalog.METRICS_ADAPTER_MANIFEST_URL) and fetched by the provider at deploy
time, like the LWS controller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s

from components import catalog


def adapter_principal(project: str, project_number: str) -> str:
    """The Workload Identity principal of the adapter's Kubernetes service account."""
    return (
        f"principal://iam.googleapis.com/projects/{project_number}/locations/global/workloadIdentityPools/"
        f"{project}.svc.id.goog/subject/ns/{catalog.METRICS_ADAPTER_NAMESPACE}/sa/{catalog.METRICS_ADAPTER_KSA}"
    )


@dataclass
class MetricsAdapterArgs:
    project: str
    project_number: str  # principals name the project by number
    identity_pool_ready: Sequence[pulumi.Resource]  # the cluster (its Workload Identity pool)


class MetricsAdapter(pulumi.ComponentResource):
    manifest_url: pulumi.Output[str]
    ready: list[pulumi.Resource]  # the HPA waits for these

    def __init__(
        self, name: str, args: MetricsAdapterArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("tpu-pathways-inference:index:MetricsAdapter", name, None, opts)
        reader = gcp.projects.IAMMember(
            f"{name}-monitoring-viewer",
            project=args.project,
            role="roles/monitoring.viewer",
            member=adapter_principal(args.project, args.project_number),
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.identity_pool_ready)),
        )
        manifest = k8s.yaml.v2.ConfigFile(
            f"{name}-manifest",
            file=catalog.METRICS_ADAPTER_MANIFEST_URL,
            opts=pulumi.ResourceOptions(parent=self),  # the Kubernetes provider comes through opts
        )
        self.ready = [reader, manifest]
        self.manifest_url = pulumi.Output.from_input(catalog.METRICS_ADAPTER_MANIFEST_URL)
        self.register_outputs({"manifest_url": self.manifest_url})
