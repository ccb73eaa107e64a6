"""The Pulumi program's two steps: read the typed config, then build every component from it.

This is the one place that maps the whole `StackConfig` onto each component's narrow args (what
that component consumes). `__main__.py` only calls `read_pulumi_config` and `build`; tests and
`preview` run the same code under mocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi

from components import catalog, manifests
from components.batch_job import BatchJob, BatchJobArgs
from components.config import PROJECT_PLACEHOLDER, ConfigError, StackConfig, parse_stack_config
from components.config_rules import gcs_bucket
from components.existing_cluster import ExistingCluster, ExistingClusterArgs
from components.gke_cluster import GkeCluster, GkeClusterArgs
from components.inference_workload import InferenceWorkload, InferenceWorkloadArgs, WorkloadObjects
from components.lws_controller import LwsController, LwsControllerArgs
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
    if c.project == PROJECT_PLACEHOLDER and not pulumi.runtime.is_dry_run():
        raise ConfigError(
            f"gcp:project: still the placeholder {PROJECT_PLACEHOLDER!r}; run: pulumi config set gcp:project <id>"
        )
    return c


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


def cluster_args(c: StackConfig) -> GkeClusterArgs:
    return GkeClusterArgs(
        project=c.project,
        name=c.cluster.name,
        location=c.cluster.zone,
        release_channel=c.cluster.release_channel,
        min_master_version=c.min_master_version,
        deletion_protection=c.cluster.deletion_protection,
        system_pool=c.cluster.system_pool,
        system_service_account=node_service_account(c, "system-nodes", "GKE system nodes"),
        labels=resource_labels(c),
    )


def slice_pool_spec(c: StackConfig, index: int) -> SlicePoolSpec:
    """Slices beyond the always-on ones (autoscaling headroom) and flex-start slices scale from 0."""
    return SlicePoolSpec(
        index=index,
        project=c.project,
        zone=c.cluster.zone,
        machine_type=c.tpu.machine_type,
        topology=c.tpu.topology,
        vms=c.vms_per_slice,
        multi_host=c.multi_host,
        capacity=c.tpu.capacity,
        reservation=c.tpu.reservation,
        scale_from_zero=index >= c.always_on_slices or c.tpu.capacity == "flex-start",
    )


def storage_args(c: StackConfig, node_member: pulumi.Input[str] | None) -> ScratchStorageArgs:
    return ScratchStorageArgs(
        project=c.project,
        bucket_name=c.scratch_bucket,
        location=c.region.upper(),
        force_destroy=c.storage.force_destroy,
        retention_days=c.storage.scratch_retention_days,
        labels=resource_labels(c),
        checkpoint_bucket=gcs_bucket(c.model.checkpoint),
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


def batch_job_args(c: StackConfig, workload: pulumi.Resource) -> BatchJobArgs:
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
    )


def build(c: StackConfig) -> dict[str, pulumi.Input[Any]]:
    """Register every resource of the stack; returns the stack outputs."""
    cluster: GkeCluster | ExistingCluster
    if c.cluster.create:
        cluster = GkeCluster("gke", cluster_args(c))
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
    workload = InferenceWorkload(
        "inference",
        InferenceWorkloadArgs(objects=workload_objects(c), controller=controller, after=[storage, *pools]),
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
    }
    if c.batch_job.enabled:
        batch = BatchJob("batch", batch_job_args(c, workload.lws), opts=k8s_opts)
        outputs["batch_job_name"] = batch.job_name
    return outputs
