"""Every nested key the program registers is one the installed provider SDKs declare.

Runs the real `__main__.py` under the recording mocks for every stack variant the issue names and
checks each resource's inputs against its Args class (tests/components/sdk_inputs.py). Custom
resources have no Args class: the LeaderWorkerSet is validated against the official CRDs with
unknown fields rejected (test_manifests.py); the PodMonitoring, whose CRD is not vendored here, is
compared field by field with the documented shape below.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pulumi_gcp as gcp
import pytest

from components.mocks import Recording, run_program

from . import sdk_inputs
from .conftest import STACKS, app_model, stack_values, variant
from .test_program import IMG, run_main

PRODUCTION_OPTIONS = {
    "cluster": {
        "regional": True,
        "maintenance": {
            "window": {
                "start_time": "2025-01-04T02:00:00Z",
                "end_time": "2025-01-04T08:00:00Z",
                "recurrence": "FREQ=WEEKLY;BYDAY=SA,SU",
            },
            "exclusions": [
                {"name": "launch", "start_time": "2025-11-20T00:00:00Z", "end_time": "2025-12-01T00:00:00Z"}
            ],
        },
    },
    "network": {
        "private_nodes": True,
        "master_authorized_networks": [{"cidr_block": "203.0.113.0/24", "display_name": "office"}],
    },
}


def _variants(kubeconfig: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """The stack variants issue 11 names, plus the production options and an existing VPC."""
    app = {"engine": "inference-app", "maxtext_extra_args": None}
    return {
        **{s: (s, stack_values(s)) for s in STACKS},
        "autoscaling": ("dev", variant("dev", autoscaling={"enabled": True, "max_replicas": 3})),
        "batch-job": (
            "dev",
            variant(
                "dev",
                serving=app,
                images={"inference_app": IMG},
                model=app_model("dev"),
                batch_job={
                    "enabled": True,
                    "input": "gs://my-data/in.jsonl",
                    "output": "gs://my-data/out.jsonl",
                },
            ),
        ),
        "flex-start": (
            "llama31-405b-v6e16",
            variant("llama31-405b-v6e16", tpu={"capacity": "flex-start", "max_run_duration_hours": 72}),
        ),
        "reservation": (
            "llama2-70b-disagg",
            variant("llama2-70b-disagg", tpu={"capacity": "reservation", "reservation": "my-v6e-res"}),
        ),
        "inference-app": (
            "llama2-70b-disagg",
            variant(
                "llama2-70b-disagg",
                serving=app,
                images={"inference_app": IMG},
                # a tokenizer in another bucket: the nodes get a second read grant
                model=app_model("llama2-70b-disagg", hf_tokenizer_path="gs://my-tokenizers/llama2-70b"),
            ),
        ),
        "existing-cluster": (
            "dev",
            variant(
                "dev",
                cluster={"create": False, "context": "ctx", "kubeconfig_path": kubeconfig},
            ),
        ),
        "production-options": ("llama31-405b-v6e16", variant("llama31-405b-v6e16", **PRODUCTION_OPTIONS)),
        "existing-network": (
            "dev",
            variant("dev", network={"create": False, "name": "shared-vpc", "subnetwork": "tpu-nodes"}),
        ),
    }


VARIANT_NAMES = sorted(_variants(""))


@cache
def recording(name: str, tmp: str) -> Recording:
    kubeconfig = Path(tmp) / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    stack, values = _variants(str(kubeconfig))[name]
    return run_main(values, stack)


# The PodMonitoring's fields (Managed Service for Prometheus, monitoring.googleapis.com/v1).
POD_MONITORING_KEYS = {
    "": {"metadata", "spec"},
    "spec": {"selector", "endpoints"},
    "spec.selector": {"matchLabels"},
    "spec.endpoints[]": {"port", "path", "interval"},
}


def _problems(rec: Recording) -> list[str]:
    problems = []
    for r in rec.resources:
        if not r.custom:
            continue  # our components
        cls = sdk_inputs.args_class(r.type)
        if cls is None:
            if r.type.endswith(":PodMonitoring"):
                spec = r.inputs["spec"]
                assert set(r.inputs) - {"apiVersion", "kind"} <= POD_MONITORING_KEYS[""]
                assert set(spec) <= POD_MONITORING_KEYS["spec"]
                assert set(spec["selector"]) <= POD_MONITORING_KEYS["spec.selector"]
                assert all(set(e) <= POD_MONITORING_KEYS["spec.endpoints[]"] for e in spec["endpoints"])
            continue
        problems += [
            f"{r.type} {r.name}: {p}" for p in sdk_inputs.unknown_keys(r.inputs, sdk_inputs.Obj(cls))
        ]
    return problems


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_every_nested_key_is_declared_by_the_sdk(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    rec = recording(name, str(tmp_path_factory.getbasetemp()))
    assert _problems(rec) == []
    assert len({r.type for r in rec.resources if r.custom}) >= 4  # the walk saw real resources


def test_the_walk_descends_into_nested_types() -> None:
    """Not vacuous: nested Args classes are found and their keys checked, lists and maps too."""
    pool = sdk_inputs.properties(gcp.container.NodePoolArgs)
    node_config = pool["nodeConfig"]
    assert isinstance(node_config, sdk_inputs.Obj)
    nested = sdk_inputs.properties(node_config.cls)
    assert isinstance(nested["taints"], sdk_inputs.Seq) and isinstance(nested["taints"].item, sdk_inputs.Obj)
    assert isinstance(nested["labels"], sdk_inputs.Map)
    assert isinstance(nested["workloadMetadataConfig"], sdk_inputs.Obj)


def test_a_misspelt_nested_key_is_caught() -> None:
    """The SDK sends a misspelt key as it is; the mocks accept it; the walk reports it."""

    def program() -> None:
        gcp.container.NodePool(
            "typo",
            cluster="c",
            node_config={
                "machine_type": "ct6e-standard-4t",
                "workload_metadata_confg": {"mode": "GCE_METADATA"},
            },
            placement_policy={"type": "COMPACT", "tpu_topolgy": "4x4"},
        )

    rec = run_program({"gcp:project": "my-project"}, "dev", program)
    (pool,) = rec.resources
    assert "workload_metadata_confg" in pool.inputs["nodeConfig"]  # passed through untranslated
    assert sorted(_problems(rec)) == [
        "gcp:container/nodePool:NodePool typo: nodeConfig.workload_metadata_confg: "
        "unknown to NodePoolNodeConfigArgs",
        "gcp:container/nodePool:NodePool typo: placementPolicy.tpu_topolgy: "
        "unknown to NodePoolPlacementPolicyArgs",
    ]


def test_a_misspelt_kubernetes_key_is_caught() -> None:
    import pulumi_kubernetes as k8s

    def program() -> None:
        k8s.core.v1.Service(
            "svc", metadata={"name": "s"}, spec={"ports": [{"port": 80, "target_prot": 8000}]}
        )

    rec = run_program({"gcp:project": "my-project"}, "dev", program)
    assert any("spec.ports[0].target_prot" in p for p in _problems(rec)), _problems(rec)
