"""The Pulumi program's two steps: read the typed config, then build every component from it.

`__main__.py` only calls these; tests and `preview` run the same code under mocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi

from components import catalog
from components.batch_job import BatchJob, BatchJobArgs
from components.config import PROJECT_PLACEHOLDER, ConfigError, StackConfig, parse_stack_config
from components.gke_cluster import GkeCluster, GkeClusterArgs
from components.inference_workload import InferenceWorkload, InferenceWorkloadArgs
from components.lws_controller import LwsController, LwsControllerArgs
from components.service_accounts import ServiceAccount, ServiceAccountArgs
from components.storage import ScratchStorage, ScratchStorageArgs
from components.tpu_slice_pool import TpuSlicePool, TpuSlicePoolArgs


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


def build(c: StackConfig) -> dict[str, pulumi.Input[Any]]:
    """Register every resource of the stack; returns the stack outputs."""
    cluster = GkeCluster("gke", GkeClusterArgs(config=c))
    k8s_opts = pulumi.ResourceOptions(providers=[cluster.provider])

    node_member: pulumi.Input[str] | None
    pools: list[pulumi.Resource] = []
    if c.cluster.create:
        tpu_sa = ServiceAccount(
            "tpu-nodes",
            ServiceAccountArgs(
                project=c.project,
                account_id=c.service_account_id("tpu-nodes"),
                display_name=f"GKE TPU nodes ({c.stack})",
                project_roles=catalog.NODE_SA_PROJECT_ROLES,
            ),
        )
        node_member = tpu_sa.member
        pools = [
            TpuSlicePool(
                f"tpu-pool-{i}",
                TpuSlicePoolArgs(
                    config=c, index=i, cluster_name=cluster.cluster_name, service_account_email=tpu_sa.email
                ),
            )
            for i in range(c.slice_count)
        ]
    elif c.cluster.node_service_account is not None:
        node_member = f"serviceAccount:{c.cluster.node_service_account}"
    else:
        node_member = None

    storage = ScratchStorage("storage", ScratchStorageArgs(config=c, node_member=node_member))
    controller = LwsController(
        "lws", LwsControllerArgs(version=c.lws.version, install=c.lws.install), opts=k8s_opts
    )
    workload = InferenceWorkload(
        "inference",
        InferenceWorkloadArgs(config=c, controller=controller, after=[storage, *pools]),
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
        batch = BatchJob("batch", BatchJobArgs(config=c, workload=workload.lws), opts=k8s_opts)
        outputs["batch_job_name"] = batch.job_name
    return outputs
