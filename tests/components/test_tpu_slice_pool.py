"""Node-pool inputs per capacity type and shape (pure; the mocks tests check the registered pools)."""

from __future__ import annotations

from components.program import slice_pool_spec
from components.tpu_slice_pool import node_pool_inputs

from .conftest import load_stack, variant_config


def test_reservation_capacity_targets_the_named_reservation() -> None:
    c = variant_config("llama31-405b-v6e16", tpu={"capacity": "reservation", "reservation": "my-v6e-res"})
    inputs = node_pool_inputs(slice_pool_spec(c, 0))
    assert inputs["node_config"]["reservation_affinity"] == {
        "consume_reservation_type": "SPECIFIC_RESERVATION",
        "key": "compute.googleapis.com/reservation-name",
        "values": ["my-v6e-res"],
    }
    assert "spot" not in inputs["node_config"] and inputs["node_count"] == 4


def test_flex_start_scales_the_whole_slice_from_zero() -> None:
    c = variant_config("llama31-405b-v6e16", tpu={"capacity": "flex-start"})
    inputs = node_pool_inputs(slice_pool_spec(c, 0))
    assert inputs["node_config"]["flex_start"] is True
    assert inputs["node_config"]["reservation_affinity"] == {"consume_reservation_type": "NO_RESERVATION"}
    assert inputs["initial_node_count"] == 0 and "node_count" not in inputs
    assert inputs["autoscaling"] == {
        "total_min_node_count": 0,
        "total_max_node_count": 4,
        "location_policy": "ANY",
    }
    assert inputs["placement_policy"] == {"type": "COMPACT", "tpu_topology": "4x4"}


def test_on_demand_and_spot() -> None:
    on_demand = node_pool_inputs(slice_pool_spec(load_stack("llama2-70b-disagg"), 1))
    assert on_demand["name"] == "tpu-1" and on_demand["node_count"] == 2
    assert not {"spot", "flex_start", "reservation_affinity"} & set(on_demand["node_config"])
    spot = node_pool_inputs(slice_pool_spec(load_stack("dev"), 0))
    assert spot["node_config"]["spot"] is True
    assert "placement_policy" not in spot  # single-host shape
