"""The Pulumi program's steps: read the typed config, check it against the cloud, build the components.

This is the one place that maps the whole `StackConfig` onto each component's narrow args (what
that component consumes). `__main__.py` only calls `read_pulumi_config`, `check_before_registering`
and `build`; tests and `preview` run the same code under mocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pulumi_gcp as gcp

from components import catalog, cost, manifests
from components.batch_job import BatchJob, BatchJobArgs
from components.config import ConfigError, StackConfig, parse_stack_config
from components.config_rules import gcs_bucket, placeholder_problems, placeholders
from components.existing_cluster import ExistingCluster, ExistingClusterArgs
from components.gke_cluster import ClusterNetworking, GkeCluster, GkeClusterArgs
from components.inference_workload import InferenceWorkload, InferenceWorkloadArgs, WorkloadObjects
from components.lws_controller import LwsController, LwsControllerArgs
from components.metrics_adapter import MetricsAdapter, MetricsAdapterArgs
from components.network import Network, NetworkArgs
from components.preflight import preflight_problems
from components.service_accounts import ServiceAccount, ServiceAccountArgs
from components.storage import ScratchStorage, ScratchStorageArgs
from components.tpu_slice_pool import SlicePoolSpec, TpuSlicePool, TpuSlicePoolArgs


def read_pulumi_config() -> StackConfig:
    """All config keys of the running stack, validated (unknown keys of our namespace are errors).

    `pulumi.Config` cannot list keys, so the runtime's config map is read directly: values set
    in-process (mocks, automation) and the PULUMI_CONFIG bag the language host passes.
    """
    from pulumi.runtime import config as runtime_config

    values: dict[str, Any] = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    c = parse_stack_config(values, stack=pulumi.get_stack())
    path = c.cluster.kubeconfig_path
    if path is not None and not Path(path).expanduser().is_file():
        raise ConfigError(
            f"cluster.kubeconfig_path: {path} is not a file (point it at your kubeconfig or remove it)"
        )
    return c


def check_before_registering(c: StackConfig) -> bool:
    """Refuse placeholders and what the cloud would refuse, before any resource is registered.

    On `pulumi up` a placeholder is an error. Under `pulumi preview` it is a warning (the stack
    files ship them) and the pre-flight reads that depend on it are skipped. Returns whether the
    project is real, so lookups such as the project number may run.
    """
    unset = placeholders(c)
    if unset and not pulumi.runtime.is_dry_run():
        raise ConfigError("\n".join(placeholder_problems(c)))
    for message in placeholder_problems(c):
        pulumi.log.warn(f"{message} (`pulumi up` refuses placeholders; the checks that need it are skipped)")
    problems = preflight_problems(c, skip=unset.keys())
    if problems:
        raise ConfigError("\n".join(problems))
    return "project" not in unset


def project_number(c: StackConfig, cloud_read: bool) -> str:
    """The project number (IAM principals name projects by number); a marker when not looked up."""
    if not cloud_read:
        return "PROJECT_NUMBER"  # preview with a placeholder project: nothing to look up
    return str(gcp.organizations.get_project(project_id=c.project).number)


def resource_labels(c: StackConfig) -> dict[str, str]:
    """GCP labels on the cluster and buckets: who manages them, for which stack."""
    return {"managed-by": "pulumi", "stack": c.stack}


def node_service_account(c: StackConfig, role: str, display: str) -> ServiceAccountArgs:
    """A node pool's dedicated account: logs, metrics and image pulls only."""
    return ServiceAccountArgs(
        project=c.project,
        account_id=c.service_account_id(role),
        display_name=f"{display} ({c.stack})",
        project_roles=catalog.NODE_SA_PROJECT_ROLES,
    )


def network_args(c: StackConfig) -> NetworkArgs:
    n = c.network
    return NetworkArgs(
        project=c.project,
        region=c.region,
        network_name=c.network_name,
        subnetwork_name=c.subnetwork_name,
        nodes_cidr=n.nodes_cidr,
        pods_cidr=n.pods_cidr,
        services_cidr=n.services_cidr,
        pods_range_name=n.pods_range_name,
        services_range_name=n.services_range_name,
        cloud_nat=c.cloud_nat,
    )


def cluster_networking(c: StackConfig, network: Network | None) -> ClusterNetworking:
    """The created VPC's links, or your VPC's names (network.create: false)."""
    return ClusterNetworking(
        network=network.network if network is not None else c.network_name,
        subnetwork=network.subnetwork if network is not None else c.subnetwork_name,
        pods_range_name=c.network.pods_range_name,
        services_range_name=c.network.services_range_name,
        private_nodes=c.private_nodes,
        master_authorized_networks=c.network.master_authorized_networks,
        after=network.resources if network is not None else [],
    )


def cluster_args(c: StackConfig, networking: ClusterNetworking) -> GkeClusterArgs:
    return GkeClusterArgs(
        project=c.project,
        name=c.cluster.name,
        location=c.cluster_location,
        node_zone=c.cluster.zone,
        release_channel=c.cluster.release_channel,
        min_master_version=c.cluster.min_master_version,
        deletion_protection=c.cluster.deletion_protection,
        system_pool=c.cluster.system_pool,
        system_service_account=node_service_account(c, "system-nodes", "GKE system nodes"),
        maintenance=c.cluster.maintenance,
        networking=networking,
        labels=resource_labels(c),
    )


def slice_pool_spec(c: StackConfig, index: int) -> SlicePoolSpec:
    """Slices beyond the always-on ones (autoscaling headroom) and flex-start slices scale from 0."""
    return SlicePoolSpec(
        index=index,
        project=c.project,
        location=c.cluster_location,
        zone=c.cluster.zone,
        machine_type=c.tpu.machine_type,
        topology=c.tpu.topology,
        vms=c.vms_per_slice,
        multi_host=c.multi_host,
        capacity=c.tpu.capacity,
        reservation=c.tpu.reservation,
        scale_from_zero=index >= c.always_on_slices or c.tpu.capacity == "flex-start",
        max_run_duration_hours=c.tpu.max_run_duration_hours,
    )


def storage_args(c: StackConfig, node_member: pulumi.Input[str] | None) -> ScratchStorageArgs:
    return ScratchStorageArgs(
        project=c.project,
        bucket_name=c.scratch_bucket,
        location=c.region.upper(),
        force_destroy=c.storage.force_destroy,
        retention_days=c.storage.scratch_retention_days,
        labels=resource_labels(c),
        checkpoint_bucket=c.checkpoint_bucket,
        tokenizer_bucket=c.tokenizer_bucket,
        node_member=node_member,
    )


def workload_objects(c: StackConfig) -> WorkloadObjects:
    return WorkloadObjects(
        namespace=manifests.namespace(c),
        leader_worker_set=manifests.leader_worker_set(c),
        service=manifests.service(c),
        pod_monitoring=manifests.pod_monitoring(c),
        autoscaler=manifests.horizontal_pod_autoscaler(c),
    )


def batch_job_args(
    c: StackConfig, workload: pulumi.Resource, identity_pool_ready: list[pulumi.Resource]
) -> BatchJobArgs:
    b = c.batch_job
    ksa, job = manifests.batch_service_account(c), manifests.batch_job(c)
    assert b.input is not None and b.output is not None and ksa is not None and job is not None  # enabled
    return BatchJobArgs(
        project=c.project,
        service_account=ServiceAccountArgs(
            project=c.project,
            account_id=c.batch_service_account_id,
            display_name=f"Batch job ({c.stack})",
        ),
        input_bucket=gcs_bucket(b.input),
        output_bucket=gcs_bucket(b.output),
        service_account_object=ksa,
        job_object=job,
        workload=workload,
        identity_pool_ready=identity_pool_ready,
    )


def build(c: StackConfig, *, cloud_read: bool = True) -> dict[str, pulumi.Input[Any]]:
    """Register every resource of the stack; returns the stack outputs.

    `cloud_read` is what `check_before_registering` returned: false only under a preview with
    placeholders, where nothing is looked up in the cloud.
    """
    cluster: GkeCluster | ExistingCluster
    if c.cluster.create:
        network = Network("network", network_args(c)) if c.network.create else None
        cluster = GkeCluster("gke", cluster_args(c, cluster_networking(c, network)))
    else:
        assert c.cluster.context is not None  # validated
        cluster = ExistingCluster(
            "gke",
            ExistingClusterArgs(
                name=c.cluster.name, context=c.cluster.context, kubeconfig_path=c.cluster.kubeconfig_path
            ),
        )
    k8s_opts = pulumi.ResourceOptions(providers=[cluster.provider])

    node_member: pulumi.Input[str] | None
    pools: list[pulumi.Resource] = []
    if c.cluster.create:
        tpu_sa = ServiceAccount("tpu-nodes", node_service_account(c, "tpu-nodes", "GKE TPU nodes"))
        node_member = tpu_sa.member
        pools = [
            TpuSlicePool(
                f"tpu-pool-{i}",
                TpuSlicePoolArgs(
                    spec=slice_pool_spec(c, i),
                    cluster_name=cluster.cluster_name,
                    service_account_email=tpu_sa.email,
                    after=tpu_sa.bindings,
                ),
            )
            for i in range(c.slice_count)
        ]
    elif c.cluster.node_service_account is not None:
        node_member = f"serviceAccount:{c.cluster.node_service_account}"
    else:
        node_member = None

    storage = ScratchStorage("storage", storage_args(c, node_member))
    controller = LwsController(
        "lws", LwsControllerArgs(version=c.lws.version, install=c.lws.install), opts=k8s_opts
    )
    metrics_api: list[pulumi.Resource] = []
    if c.autoscaling.enabled and c.autoscaling.install_metrics_adapter:
        adapter = MetricsAdapter(
            "metrics-adapter",
            MetricsAdapterArgs(
                project=c.project,
                project_number=project_number(c, cloud_read),
                identity_pool_ready=cluster.ready,
            ),
            opts=k8s_opts,
        )
        metrics_api = adapter.ready
    workload = InferenceWorkload(
        "inference",
        InferenceWorkloadArgs(
            objects=workload_objects(c),
            controller=controller,
            after=[storage, *pools],
            metrics_api=metrics_api,
        ),
        opts=k8s_opts,
    )
    outputs: dict[str, pulumi.Input[Any]] = {
        "cluster_name": cluster.cluster_name,
        "kubeconfig": cluster.kubeconfig,
        "namespace": workload.namespace,
        "service_name": workload.service_name,
        "leader_pod_name": workload.leader_pod_name,
        "port_forward_command": workload.port_forward_command,
        "curl_command": workload.curl_command,
        "scratch_location": storage.scratch_location,
        "lws_version": controller.version,
        "cost_estimate": cost.as_output(cost.estimate(c)),
    }
    if c.batch_job.enabled:
        batch = BatchJob("batch", batch_job_args(c, workload.lws, cluster.ready), opts=k8s_opts)
        outputs["batch_job_name"] = batch.job_name
    return outputs
