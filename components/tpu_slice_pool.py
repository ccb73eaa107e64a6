"""One TPU slice = one GKE node pool: machine type, topology placement, capacity, dedicated SA."""

from __future__ import annotations

from collections.abc import Sequence
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
    location: str  # the cluster's location (its zone, or its region with a regional control plane)
    zone: str  # where the slice's VMs run
    machine_type: str
    topology: str
    vms: int  # VMs in the slice = nodes of the pool
    multi_host: bool
    capacity: str  # on-demand | spot | reservation | flex-start
    reservation: str | None
    scale_from_zero: bool  # autoscaling headroom or flex-start: 0..vms nodes
    max_run_duration_hours: int | None = None  # flex-start only (GKE's default: 7 days)


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
        if spec.max_run_duration_hours is not None:
            node_config["max_run_duration"] = f"{spec.max_run_duration_hours * 3600}s"
    elif spec.capacity == "reservation":
        node_config["reservation_affinity"] = {
            "consume_reservation_type": "SPECIFIC_RESERVATION",
            "key": "compute.googleapis.com/reservation-name",
            "values": [spec.reservation],
        }
    inputs: dict[str, Any] = {
        "name": f"tpu-{spec.index}",
        "project": spec.project,
        "location": spec.location,
        "node_locations": [spec.zone],
        "management": {"auto_repair": True, "auto_upgrade": True},
        "node_config": node_config,
    }
    if spec.capacity != "flex-start":  # flex-start pools get GKE's short-lived upgrades instead
        # No surge: a surge node would need a second slice's quota and capacity. GKE recreates a
        # multi-host slice as a unit anyway, so the maintenance window decides when that happens.
        inputs["upgrade_settings"] = {"strategy": "SURGE", "max_surge": 0, "max_unavailable": 1}
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
    after: Sequence[pulumi.Resource]  # the nodes' account's role bindings (logs from the first boot)


class TpuSlicePool(pulumi.ComponentResource):
    node_pool_name: pulumi.Output[str]

    def __init__(self, name: str, args: TpuSlicePoolArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tpu-pathways-inference:index:TpuSlicePool", name, None, opts)
        inputs = node_pool_inputs(args.spec)
        inputs["node_config"] = {**inputs["node_config"], "service_account": args.service_account_email}
        pool = gcp.container.NodePool(
            f"{name}-node-pool",
            cluster=args.cluster_name,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=list(args.after),
                # The pool's name is fixed (tpu-<i>), so a replacement (new topology, capacity type)
                # must delete the old slice first; the two could not coexist under one name.
                delete_before_replace=True,
                # Set at creation only: GKE updates it when the autoscaler or a user resizes the pool,
                # and a change would force a new pool.
                ignore_changes=["initialNodeCount"] if "initial_node_count" in inputs else None,
            ),
            **inputs,
        )
        self.node_pool_name = pool.name
        self.register_outputs({"node_pool_name": self.node_pool_name})
