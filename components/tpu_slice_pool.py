"""One TPU slice = one GKE node pool: machine type, topology placement, capacity, dedicated SA."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_gcp as gcp

from components import catalog


@dataclass(frozen=True)
class SlicePoolSpec:
    """One TPU slice's node pool, as the program derives it from the config (pure data)."""

    index: int  # the pool is named tpu-<index>
    project: str
    zone: str
    machine_type: str
    topology: str
    vms: int  # VMs in the slice = nodes of the pool
    multi_host: bool
    capacity: str  # on-demand | spot | reservation | flex-start
    reservation: str | None
    scale_from_zero: bool  # autoscaling headroom or flex-start: 0..vms nodes


def node_pool_inputs(spec: SlicePoolSpec) -> dict[str, Any]:
    """The node pool's inputs (pure; tests compare them with the catalog).

    Slices beyond the always-on ones (autoscaling headroom) and flex-start slices scale between 0 and
    the full slice; GKE provisions a multi-host slice atomically.
    """
    node_config: dict[str, Any] = {
        "machine_type": spec.machine_type,
        "oauth_scopes": ["https://www.googleapis.com/auth/cloud-platform"],
        "gvnic": {"enabled": True},
        # As in Google's tutorial: TPU pods reach GCS as the node's (dedicated) service account.
        "workload_metadata_config": {"mode": "GCE_METADATA"},
        "taints": [{"key": catalog.TPU_TAINT_KEY, "value": "present", "effect": "NO_SCHEDULE"}],
        "labels": {"tpu-pathways-inference/slice": str(spec.index)},
        "shielded_instance_config": {"enable_secure_boot": True, "enable_integrity_monitoring": True},
    }
    if spec.capacity == "spot":
        node_config["spot"] = True
    elif spec.capacity == "flex-start":
        node_config["flex_start"] = True
        node_config["reservation_affinity"] = {"consume_reservation_type": "NO_RESERVATION"}
    elif spec.capacity == "reservation":
        node_config["reservation_affinity"] = {
            "consume_reservation_type": "SPECIFIC_RESERVATION",
            "key": "compute.googleapis.com/reservation-name",
            "values": [spec.reservation],
        }
    inputs: dict[str, Any] = {
        "name": f"tpu-{spec.index}",
        "project": spec.project,
        "location": spec.zone,
        "node_locations": [spec.zone],
        "management": {"auto_repair": True, "auto_upgrade": True},
        "node_config": node_config,
    }
    if spec.scale_from_zero:
        inputs["initial_node_count"] = 0
        inputs["autoscaling"] = {
            "total_min_node_count": 0,
            "total_max_node_count": spec.vms,
            "location_policy": "ANY",
        }
    else:
        inputs["node_count"] = spec.vms
    if spec.multi_host:
        # Multi-host slices need ICI-connected VMs; single-host shapes take no placement policy.
        inputs["placement_policy"] = {"type": "COMPACT", "tpu_topology": spec.topology}
    return inputs


@dataclass
class TpuSlicePoolArgs:
    spec: SlicePoolSpec
    cluster_name: pulumi.Input[str]
    service_account_email: pulumi.Input[str]


class TpuSlicePool(pulumi.ComponentResource):
    node_pool_name: pulumi.Output[str]

    def __init__(self, name: str, args: TpuSlicePoolArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tpu-pathways-inference:index:TpuSlicePool", name, None, opts)
        inputs = node_pool_inputs(args.spec)
        inputs["node_config"] = {**inputs["node_config"], "service_account": args.service_account_email}
        pool = gcp.container.NodePool(
            f"{name}-node-pool",
            cluster=args.cluster_name,
            opts=pulumi.ResourceOptions(parent=self),
            **inputs,
        )
        self.node_pool_name = pool.name
        self.register_outputs({"node_pool_name": self.node_pool_name})
