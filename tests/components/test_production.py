"""Production settings: network, upgrades, autoscaling end to end, pre-flight reads, cost and quota."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest

from components import catalog, cost
from components.config import ConfigError
from components.metrics_adapter import adapter_principal
from components.mocks import MOCK_PROJECT_NUMBER, run_program

from .conftest import load_stack, stack_values, variant, variant_config
from .test_first_up import _invokes, _real
from .test_program import run_main

CLUSTER = "gcp:container/cluster:Cluster"
POOL = "gcp:container/nodePool:NodePool"

# ---------------------------------------------------------------------------------------- network


def test_production_gets_its_own_vpc_private_nodes_and_nat() -> None:
    rec = run_main(stack_values("llama31-405b-v6e16"), "llama31-405b-v6e16")
    cluster = rec.one(CLUSTER).inputs
    subnet = rec.one("gcp:compute/subnetwork:Subnetwork").inputs
    assert cluster["privateClusterConfig"] == {"enablePrivateNodes": True}
    assert subnet["privateIpGoogleAccess"] is True
    assert {r["rangeName"] for r in subnet["secondaryIpRanges"]} == {"pods", "services"}
    assert cluster["ipAllocationPolicy"] == {
        "clusterSecondaryRangeName": "pods",
        "servicesSecondaryRangeName": "services",
    }
    assert cluster["subnetwork"].endswith("/subnetworks/pathways-405b-nodes")
    nat = rec.one("gcp:compute/routerNat:RouterNat")
    assert nat.urn in rec.one(CLUSTER).dependencies  # egress works before the first node boots


def test_development_keeps_public_nodes_without_nat() -> None:
    rec = run_main(stack_values("dev"), "dev")
    assert "privateClusterConfig" not in rec.one(CLUSTER).inputs
    assert rec.by_type("gcp:compute/routerNat:RouterNat") == []
    assert rec.one("gcp:compute/subnetwork:Subnetwork")


def test_an_existing_vpc_is_used_by_name() -> None:
    values = variant("dev", network={"create": False, "name": "shared-vpc", "subnetwork": "tpu-nodes"})
    rec = run_main(values, "dev")
    assert rec.by_type("gcp:compute/network:Network") == []
    assert (rec.one(CLUSTER).inputs["network"], rec.one(CLUSTER).inputs["subnetwork"]) == (
        "shared-vpc",
        "tpu-nodes",
    )


def test_authorized_networks_and_a_regional_control_plane() -> None:
    values = variant(
        "llama31-405b-v6e16",
        cluster={"regional": True},
        network={"master_authorized_networks": [{"cidr_block": "203.0.113.0/24", "display_name": "vpn"}]},
    )
    rec = run_main(values, "llama31-405b-v6e16")
    cluster = rec.one(CLUSTER).inputs
    assert cluster["location"] == "us-east5" and cluster["nodeLocations"] == ["us-east5-b"]
    assert cluster["masterAuthorizedNetworksConfig"] == {
        "cidrBlocks": [{"cidrBlock": "203.0.113.0/24", "displayName": "vpn"}]
    }
    for pool in rec.by_type(POOL):
        assert pool.inputs["location"] == "us-east5" and pool.inputs["nodeLocations"] == ["us-east5-b"]


@pytest.mark.parametrize(
    ("network", "expected"),
    [
        ({"create": False}, "network.name, network.subnetwork: required with network.create: false"),
        ({"pods_cidr": "10.10.0.0/16"}, "network.nodes_cidr: 10.10.0.0/20 overlaps network.pods_cidr"),
        ({"services_cidr": "10.24.0/20"}, "network.services_cidr: '10.24.0/20' is not an IPv4 CIDR"),
        (
            {"master_authorized_networks": [{"cidr_block": "office", "display_name": "x"}]},
            "network.master_authorized_networks[0].cidr_block: 'office' is not a CIDR",
        ),
    ],
)
def test_network_rules(network: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        variant_config("dev", network=network)
    assert expected in str(err.value)


# --------------------------------------------------------------------------------------- upgrades


def test_maintenance_window_and_exclusions_reach_the_cluster() -> None:
    exclusion = {"name": "launch", "start_time": "2025-11-20T00:00:00Z", "end_time": "2025-12-01T00:00:00Z"}
    values = variant(
        "llama31-405b-v6e16",
        cluster={
            "maintenance": {
                "window": load_stack("llama31-405b-v6e16").cluster.maintenance.model_dump()["window"],
                "exclusions": [exclusion],
            }
        },
    )
    policy = run_main(values, "llama31-405b-v6e16").one(CLUSTER).inputs["maintenancePolicy"]
    assert policy["recurringWindow"] == {
        "startTime": "2025-01-04T02:00:00Z",
        "endTime": "2025-01-04T08:00:00Z",
        "recurrence": "FREQ=WEEKLY;BYDAY=SA,SU",
    }
    assert policy["maintenanceExclusions"] == [
        {
            "exclusionName": "launch",
            "startTime": "2025-11-20T00:00:00Z",
            "endTime": "2025-12-01T00:00:00Z",
            "exclusionOptions": {"scope": "NO_MINOR_OR_NODE_UPGRADES"},
        }
    ]


def test_tpu_pools_never_surge_and_flex_start_pools_keep_gkes_strategy() -> None:
    rec = run_main(stack_values("llama2-70b-disagg"), "llama2-70b-disagg")
    for pool in rec.by_type(POOL):
        if pool.name.startswith("tpu-pool-"):
            assert pool.inputs["upgradeSettings"] == {"strategy": "SURGE", "maxSurge": 0, "maxUnavailable": 1}
    flex = run_main(variant("dev", tpu={"capacity": "flex-start", "max_run_duration_hours": 24}), "dev")
    (tpu,) = [p for p in flex.by_type(POOL) if p.name.startswith("tpu-pool-")]
    assert "upgradeSettings" not in tpu.inputs
    assert tpu.inputs["nodeConfig"]["maxRunDuration"] == "86400s"


@pytest.mark.parametrize(
    ("maintenance", "expected"),
    [
        (
            {
                "window": {
                    "start_time": "2025-01-04T02:00:00Z",
                    "end_time": "2025-01-04T04:00:00Z",
                    "recurrence": "FREQ=WEEKLY;BYDAY=SA",
                }
            },
            "GKE needs at least 48 h in 32 days",
        ),
        (
            {
                "window": {
                    "start_time": "2025-01-04T02:00:00+01:00",
                    "end_time": "2025-01-04T08:00:00Z",
                    "recurrence": "FREQ=DAILY",
                }
            },
            "must be RFC 3339 in UTC",
        ),
        (
            {
                "window": {
                    "start_time": "2025-01-04T02:00:00Z",
                    "end_time": "2025-01-04T08:00:00Z",
                    "recurrence": "every weekend",
                }
            },
            "must be an RRULE",
        ),
        (
            {
                "exclusions": [
                    {
                        "name": "x",
                        "start_time": "2025-01-01T00:00:00Z",
                        "end_time": "2025-03-01T00:00:00Z",
                        "scope": "NO_UPGRADES",
                    }
                ]
            },
            "a NO_UPGRADES exclusion lasts at most 30 days",
        ),
    ],
)
def test_maintenance_rules(maintenance: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        variant_config("dev", cluster={"maintenance": maintenance})
    assert expected in str(err.value)


# ---------------------------------------------------------------------- autoscaling, end to end


def test_autoscaling_installs_the_metrics_adapter_with_its_iam() -> None:
    rec = run_main(_real(variant("dev", autoscaling={"enabled": True})), "dev")
    manifest = next(
        r for r in rec.by_type("kubernetes:yaml/v2:ConfigFile") if r.name == "metrics-adapter-manifest"
    )
    assert manifest.inputs["file"] == catalog.METRICS_ADAPTER_MANIFEST_URL
    assert "/af49d863755c0535f598cfde9288ae9a75251d38/" in manifest.inputs["file"]  # pinned, not master
    viewer = next(
        r
        for r in rec.by_type("gcp:projects/iAMMember:IAMMember")
        if r.name == "metrics-adapter-monitoring-viewer"
    )
    assert viewer.inputs["role"] == "roles/monitoring.viewer"
    assert viewer.inputs["member"] == adapter_principal("my-real-project", MOCK_PROJECT_NUMBER)
    assert rec.one(CLUSTER).urn in viewer.dependencies  # the identity pool exists first
    hpa = rec.one("kubernetes:autoscaling/v2:HorizontalPodAutoscaler")
    assert {manifest.urn, viewer.urn} <= set(hpa.dependencies)
    assert rec.one(CLUSTER).inputs["monitoringConfig"] == {"managedPrometheus": {"enabled": True}}
    assert any(i.token == "gcp:organizations/getProject:getProject" for i in rec.invokes)


def test_the_adapter_can_be_left_to_the_cluster() -> None:
    rec = run_main(variant("dev", autoscaling={"enabled": True, "install_metrics_adapter": False}), "dev")
    assert [r.name for r in rec.by_type("kubernetes:yaml/v2:ConfigFile")] == ["lws-manifest"]


def test_the_adapter_principal_names_the_identity_pool() -> None:
    assert adapter_principal("acme", "42") == (
        "principal://iam.googleapis.com/projects/42/locations/global/workloadIdentityPools/acme.svc.id.goog"
        "/subject/ns/custom-metrics/sa/custom-metrics-stackdriver-adapter"
    )


# ----------------------------------------------------------------------------- pre-flight reads


def test_preview_with_a_real_project_still_checks_versions_and_zone() -> None:
    values = {**stack_values("dev"), "gcp:project": "my-real-project"}  # checkpoint still a placeholder
    rec = run_main(values, "dev", preview=True)
    tokens = {i.token for i in rec.invokes}
    assert "gcp:container/getEngineVersions:getEngineVersions" in tokens
    assert "gcp:compute/getMachineTypes:getMachineTypes" in tokens
    assert "gcp:storage/getBucketObjects:getBucketObjects" not in tokens


@pytest.mark.parametrize(
    ("token", "answer", "expected"),
    [
        (
            "gcp:storage/getBucketObjects:getBucketObjects",
            {"bucketObjects": []},
            "model.checkpoint: nothing exists under",
        ),
        (
            "gcp:storage/getBucketObjects:getBucketObjects",
            ({}, [("bucket", "googleapi: Error 404: The specified bucket does not exist")]),
            "model.checkpoint: cannot list gs://my-models",
        ),
        (
            "gcp:storage/getBucketIamPolicy:getBucketIamPolicy",
            ({}, [("bucket", "googleapi: Error 403: storage.buckets.getIamPolicy denied")]),
            "its IAM policy cannot be read",
        ),
        (
            "gcp:compute/getMachineTypes:getMachineTypes",
            {"machineTypes": []},
            "cluster.zone: us-east5-b does not offer ct6e-standard-1t",
        ),
    ],
)
def test_preflight_reports_what_the_cloud_would_refuse(token: str, answer: Any, expected: str) -> None:
    with pytest.raises(pulumi.RunError) as err:
        run_main(_real(stack_values("dev")), "dev", invokes=_invokes(**{token: answer}))
    assert expected in str(err.value)


def test_a_failed_unmocked_invoke_is_not_mistaken_for_a_cloud_answer() -> None:
    """Only the SDK's "invoke of ... failed" becomes a pre-flight message; other errors propagate."""
    from components.mocks import UnmockedCallError
    from components.preflight import tpu_zone_problems

    def program() -> None:
        tpu_zone_problems(load_stack("dev"))

    with pytest.raises(UnmockedCallError):
        run_program(
            {"gcp:project": "p"},
            "dev",
            program,
            invokes={"gcp:compute/getMachineTypes:getMachineTypes": _raise},
        )


def _raise(args: dict[str, Any]) -> Any:
    from components.mocks import UnmockedCallError

    raise UnmockedCallError("simulated")


# ----------------------------------------------------------------------------------- cost, quota


def test_cost_of_the_405b_stack() -> None:
    e = cost.estimate(load_stack("llama31-405b-v6e16"))
    assert (e.chips, e.chips_max, e.quota_chips) == (16, 16, 16)
    assert e.usd_per_chip_hour == 2.70 and e.usd_per_hour == 43.20 and e.usd_per_month == 31536
    assert e.quota_id.startswith("TPUS-PER-TPU-FAMILY") and "CT6E" in e.quota_id


def test_spot_and_autoscaling_cost() -> None:
    e = cost.estimate(variant_config("dev", autoscaling={"enabled": True, "max_replicas": 3}))
    assert (e.chips, e.chips_max) == (1, 3)
    assert e.usd_per_chip_hour == catalog.TPU_PRICES_PER_CHIP_HOUR["v6e"]["us-east5"][1]
    assert e.quota_id == "PREEMPTIBLE-TPU-V6E-per-project-region" and e.quota_chips == 3


def test_cost_report_adds_the_stacks_up(capsys: pytest.CaptureFixture[str]) -> None:
    assert cost.main(["--stack", "llama31-405b-v6e16", "--stack", "llama2-70b-disagg"]) == 0
    out = capsys.readouterr().out
    assert "stack llama31-405b-v6e16: 16 TPU v6e chips" in out and "$43.20/hour" in out
    assert "together: $86.40/hour" in out
    assert "quota: 32 chips of TPUS-PER-TPU-FAMILY-per-project-region (tpu_family=CT6E) in us-east5" in out
    assert catalog.PRICE_SOURCE in out


def test_cost_is_a_stack_output() -> None:
    out = run_main(stack_values("llama2-70b-disagg"), "llama2-70b-disagg").outputs["cost_estimate"]
    assert out["chips"] == 16 and out["usd_per_hour"] == 43.2 and out["price_source"] == catalog.PRICE_SOURCE


def test_every_catalog_zone_has_a_price() -> None:
    for gen in catalog.TPU_GENERATIONS.values():
        for zone in gen.zones:
            assert gen.region_of(zone) in catalog.TPU_PRICES_PER_CHIP_HOUR[gen.name], (gen.name, zone)
        assert set(gen.flex_start_zones) <= set(gen.zones)
