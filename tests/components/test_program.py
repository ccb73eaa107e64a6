"""The real Pulumi program (`__main__.py`) under recording mocks: graph, wiring, inputs, failures."""

from __future__ import annotations

import json
import os
import runpy
from pathlib import Path
from typing import Any

import pulumi
import pulumi_gcp as gcp
import pytest
from pulumi.runtime import rpc

from components import catalog
from components.mocks import Recording, ResourceRecord, UnmockedCallError, run_program

from .conftest import REPO_ROOT, STACKS, app_model, load_stack, stack_values, variant

SNAPSHOTS = Path(__file__).parent / "snapshots"
IMG = "us-docker.pkg.dev/my-project/inference/inference-app:0.1.0"
LWS_TYPE = "kubernetes:leaderworkerset.x-k8s.io/v1:LeaderWorkerSet"
POOL_TYPE = "gcp:container/nodePool:NodePool"


def run_main(values: dict[str, Any], stack: str, *, preview: bool = True, **kwargs: Any) -> Recording:
    """The real `__main__.py` under the recording mocks (`invokes`, `recording`: see run_program)."""
    main = str(REPO_ROOT / "__main__.py")
    return run_program(
        values, stack, lambda: runpy.run_path(main, run_name="__main__"), preview=preview, **kwargs
    )


def _short(urn: str) -> str:
    return urn.rsplit("::", 1)[-1] if urn else ""


def graph(rec: Recording) -> list[dict[str, Any]]:
    """Order-independent description of every resource: what a reviewer would diff."""
    rows = [
        {
            "type": r.type,
            "name": r.name,
            "parent": _short(r.parent),
            "dependencies": sorted(_short(d) for d in r.dependencies),
            "provider": _short(r.provider.rsplit("::", 1)[0]) if r.provider else "",
            "ignore_changes": r.ignore_changes,
            "inputs": r.inputs,
        }
        for r in rec.resources
    ]
    return sorted(rows, key=lambda row: (row["type"], row["name"]))


def _everything() -> dict[str, Any]:
    return variant(
        "dev",
        serving={"engine": "inference-app", "maxtext_extra_args": None, "namespace": "llm"},
        images={"inference_app": IMG},
        model=app_model("dev"),
        autoscaling={"enabled": True, "min_replicas": 1, "max_replicas": 2},
        batch_job={
            "enabled": True,
            "input": "gs://my-data/prompts.jsonl",
            "output": "gs://my-results/out.jsonl",
        },
    )


SNAPSHOT_CASES: dict[str, tuple[str, Any]] = {
    **{s: (s, lambda s=s: stack_values(s)) for s in STACKS},
    "dev-everything": ("dev", _everything),
}


@pytest.mark.parametrize("case", sorted(SNAPSHOT_CASES))
def test_resource_graph_snapshot(case: str) -> None:
    """Any change to types, names, parents, dependencies, providers or inputs fails here.

    After an intended change: UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/components/test_program.py
    and review the JSON diff.
    """
    stack, values = SNAPSHOT_CASES[case]
    got = json.loads(json.dumps(graph(run_main(values(), stack)), sort_keys=True))
    path = SNAPSHOTS / f"{case}.json"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    if not path.is_file():
        pytest.fail(f"no snapshot {path}; create it with UPDATE_SNAPSHOTS=1 and review it")
    assert got == json.loads(path.read_text())


@pytest.fixture(scope="module")
def recordings() -> dict[str, Recording]:
    return {s: run_main(stack_values(s), s) for s in STACKS}


def _dependency_names(r: ResourceRecord) -> set[str]:
    return {_short(d) for d in r.dependencies}


@pytest.mark.parametrize("stack", STACKS)
def test_lws_is_created_after_the_controller_bucket_and_pools(
    recordings: dict[str, Recording], stack: str
) -> None:
    rec = recordings[stack]
    lws = rec.one(LWS_TYPE)
    controller = rec.one("kubernetes:yaml/v2:ConfigFile")
    assert controller.urn in lws.dependencies
    assert controller.inputs["file"] == catalog.lws_manifest_url(load_stack(stack).lws.version)
    assert controller.inputs["file"].endswith("/v0.10.0/manifests.yaml")
    pools = {r.name for r in rec.by_type(POOL_TYPE) if r.name.startswith("tpu-pool-")}
    assert pools and pools <= _dependency_names(lws)
    assert "storage-scratch" in _dependency_names(lws)


@pytest.mark.parametrize("stack", STACKS)
def test_kubernetes_objects_use_the_explicit_provider(recordings: dict[str, Recording], stack: str) -> None:
    rec = recordings[stack]
    provider = rec.one("pulumi:providers:kubernetes")
    assert provider.inputs["enableServerSideApply"] == "true"
    k8s = [r for r in rec.resources if r.type.startswith("kubernetes:")]
    assert len(k8s) >= 3
    for r in k8s:
        assert r.provider.startswith(provider.urn + "::"), f"{r.type} {r.name} uses {r.provider!r}"
    assert {"gke-cluster", "gke-system-pool"} <= _dependency_names(provider)


@pytest.mark.parametrize("stack", STACKS)
def test_tpu_node_pools_match_the_catalog(recordings: dict[str, Recording], stack: str) -> None:
    c = load_stack(stack)
    rec = recordings[stack]
    pools = sorted(
        (r for r in rec.by_type(POOL_TYPE) if r.name.startswith("tpu-pool-")), key=lambda r: r.name
    )
    assert len(pools) == c.slice_count
    tpu_sa = next(
        r for r in rec.by_type("gcp:serviceaccount/account:Account") if r.name == "tpu-nodes-account"
    )
    tpu_email = f"{tpu_sa.inputs['accountId']}@your-gcp-project-id.iam.gserviceaccount.com"
    gen = catalog.TPU_GENERATIONS[c.tpu.generation]
    for i, pool in enumerate(pools):
        inputs, node = pool.inputs, pool.inputs["nodeConfig"]
        assert inputs["name"] == f"tpu-{i}"
        assert node["machineType"] == c.tpu.machine_type
        assert inputs["nodeCount"] == gen.topologies[c.tpu.topology][c.tpu.machine_type]
        assert node["serviceAccount"] == tpu_email and "compute@developer" not in node["serviceAccount"]
        assert node["gvnic"] == {"enabled": True}
        assert node["workloadMetadataConfig"] == {"mode": "GCE_METADATA"}
        assert node["taints"] == [{"key": "google.com/tpu", "value": "present", "effect": "NO_SCHEDULE"}]
        assert node.get("spot", False) == (c.tpu.capacity == "spot")
        if c.multi_host:
            assert inputs["placementPolicy"] == {"type": "COMPACT", "tpuTopology": c.tpu.topology}
        else:
            assert "placementPolicy" not in inputs


def test_cluster_is_hardened(recordings: dict[str, Recording]) -> None:
    prod = recordings["llama31-405b-v6e16"].one("gcp:container/cluster:Cluster").inputs
    assert prod["removeDefaultNodePool"] is True
    assert prod["deletionProtection"] is True
    assert prod["workloadIdentityConfig"] == {"workloadPool": "your-gcp-project-id.svc.id.goog"}
    assert prod["releaseChannel"] == {"channel": "REGULAR"}
    assert "minMasterVersion" not in prod  # the channel's default (checked at preview)
    assert "compute@developer" not in prod["nodeConfig"]["serviceAccount"]
    assert prod["privateClusterConfig"] == {"enablePrivateNodes": True}  # production default
    assert prod["monitoringConfig"] == {"managedPrometheus": {"enabled": True}}
    dev = recordings["dev"].one("gcp:container/cluster:Cluster").inputs
    assert "privateClusterConfig" not in dev
    assert recordings["dev"].one("gcp:container/cluster:Cluster").inputs["deletionProtection"] is False


def test_scratch_bucket_is_private_and_grants_are_narrow(recordings: dict[str, Recording]) -> None:
    rec = recordings["llama31-405b-v6e16"]
    bucket = rec.one("gcp:storage/bucket:Bucket").inputs
    assert bucket["name"] == "your-gcp-project-id-llama31-405b-v6e16-pathways"
    assert bucket["uniformBucketLevelAccess"] is True and bucket["publicAccessPrevention"] == "enforced"
    grants = {
        (r.inputs["bucket"], r.inputs["role"])
        for r in rec.by_type("gcp:storage/bucketIAMMember:BucketIAMMember")
    }
    assert grants == {
        ("your-gcp-project-id-llama31-405b-v6e16-pathways", "roles/storage.objectAdmin"),
        ("your-checkpoint-bucket", "roles/storage.objectViewer"),
    }
    roles = {r.inputs["role"] for r in rec.by_type("gcp:projects/iAMMember:IAMMember")}
    assert roles == set(catalog.NODE_SA_PROJECT_ROLES)


@pytest.mark.parametrize("stack", STACKS)
def test_outputs(recordings: dict[str, Recording], stack: str) -> None:
    out = recordings[stack].outputs
    c = load_stack(stack)
    assert out["kubeconfig"] == "[secret]"
    assert out["cluster_name"] == c.cluster.name
    assert out["namespace"] == "default" and out["service_name"] == "jetstream-svc"
    assert out["leader_pod_name"] == "jetstream-pathways-0"
    assert out["port_forward_command"] == "kubectl port-forward -n default pod/jetstream-pathways-0 8000:8000"
    assert "localhost:8000/generate" in out["curl_command"]
    assert out["scratch_location"] == c.scratch_location


def test_autoscaling_and_batch_job_variant() -> None:
    rec = run_main(_everything(), "dev")
    lws = rec.one(LWS_TYPE)
    assert lws.ignore_changes == ["spec.replicas"]  # the HPA owns replicas
    hpa = rec.one("kubernetes:autoscaling/v2:HorizontalPodAutoscaler")
    assert lws.urn in hpa.dependencies
    monitoring = rec.one("kubernetes:monitoring.googleapis.com/v1:PodMonitoring")
    assert monitoring.urn in hpa.dependencies  # the metric source exists before the HPA reads it
    assert monitoring.inputs["spec"]["endpoints"][0]["port"] == catalog.HTTP_PORT
    assert hpa.inputs["spec"]["scaleTargetRef"]["kind"] == "LeaderWorkerSet"
    pools = sorted(
        (r for r in rec.by_type(POOL_TYPE) if r.name.startswith("tpu-pool-")), key=lambda r: r.name
    )
    assert len(pools) == 2  # max_replicas x 1 slice
    assert pools[0].inputs["nodeCount"] == 1 and "autoscaling" not in pools[0].inputs
    assert pools[1].inputs["autoscaling"] == {
        "totalMinNodeCount": 0,
        "totalMaxNodeCount": 1,
        "locationPolicy": "ANY",
    }
    assert pools[1].inputs["initialNodeCount"] == 0
    job = rec.one("kubernetes:batch/v1:Job")
    ksa = rec.one("kubernetes:core/v1:ServiceAccount")
    assert {lws.urn, ksa.urn} <= set(job.dependencies)
    assert job.inputs["spec"]["template"]["spec"]["containers"][0]["command"][:4] == [
        "python",
        "-m",
        "inference_app",
        "batch",
    ]
    wi = rec.one("gcp:serviceaccount/iAMMember:IAMMember")
    assert wi.inputs["member"] == "serviceAccount:your-gcp-project-id.svc.id.goog[llm/batch-inference]"
    assert wi.inputs["role"] == "roles/iam.workloadIdentityUser"
    ns = rec.one("kubernetes:core/v1:Namespace")
    assert ns.urn in lws.dependencies
    assert rec.outputs["batch_job_name"] == "batch-inference"


def test_existing_cluster_creates_no_cluster(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    values = variant(
        "dev",
        cluster={
            "create": False,
            "context": "gke_my-project_us-east5-b_existing",
            "kubeconfig_path": str(kubeconfig),
            "node_service_account": "tpu-nodes@my-project.iam.gserviceaccount.com",
        },
        lws={"install": False},
    )
    rec = run_main(values, "dev")
    types = {r.type for r in rec.resources}
    assert "gcp:container/cluster:Cluster" not in types and POOL_TYPE not in types
    assert "kubernetes:yaml/v2:ConfigFile" not in types  # lws.install false
    provider = rec.one("pulumi:providers:kubernetes")
    assert provider.inputs["context"] == "gke_my-project_us-east5-b_existing"
    assert provider.inputs["kubeconfig"]["value"] == "apiVersion: v1\nkind: Config\n"  # a secret
    assert provider.inputs["kubeconfig"][rpc._special_sig_key] == rpc._special_secret_sig
    members = {r.inputs["member"] for r in rec.by_type("gcp:storage/bucketIAMMember:BucketIAMMember")}
    assert members == {"serviceAccount:tpu-nodes@my-project.iam.gserviceaccount.com"}
    assert rec.one(LWS_TYPE).provider.startswith(provider.urn)


def test_guide_lws_version_installs_its_manifest() -> None:
    rec = run_main(variant("dev", lws={"version": "v0.4.0"}), "dev")
    controller = rec.one("kubernetes:yaml/v2:ConfigFile")
    assert (
        controller.inputs["file"]
        == "https://github.com/kubernetes-sigs/lws/releases/download/v0.4.0/manifests.yaml"
    )
    assert controller.urn in rec.one(LWS_TYPE).dependencies


def test_invalid_config_registers_nothing() -> None:
    values = variant("llama31-405b-v6e16", serving={"per_device_batch_size": 40})
    main = str(REPO_ROOT / "__main__.py")
    rec = Recording()
    with pytest.raises(pulumi.RunError, match=r"serving\.per_device_batch_size"):
        run_program(
            values, "llama31-405b-v6e16", lambda: runpy.run_path(main, run_name="__main__"), recording=rec
        )
    assert rec.resources == []
    # The same recording mechanism does see resources when the config is valid.
    run_program(stack_values("dev"), "dev", lambda: runpy.run_path(main, run_name="__main__"), recording=rec)
    assert rec.resources


def test_missing_kubeconfig_file_is_a_config_error(tmp_path: Path) -> None:
    values = variant(
        "dev", cluster={"create": False, "context": "ctx", "kubeconfig_path": str(tmp_path / "nope")}
    )
    with pytest.raises(pulumi.RunError, match=r"cluster\.kubeconfig_path: .* is not a file"):
        run_main(values, "dev")


def test_placeholder_project_is_refused_on_up() -> None:
    with pytest.raises(pulumi.RunError, match="gcp:project: 'your-gcp-project-id' is a placeholder"):
        run_main(stack_values("dev"), "dev", preview=False)


def test_unmocked_invoke_fails_loudly() -> None:
    def program() -> None:
        gcp.compute.get_zones(region="us-east5")

    with pytest.raises(UnmockedCallError, match="unmocked invoke"):
        run_program(stack_values("dev"), "dev", program)


def test_unmocked_resource_type_fails_loudly() -> None:
    def program() -> None:
        pulumi.CustomResource("example:index:Unknown", "thing", {})

    with pytest.raises(UnmockedCallError, match="has no mock"):
        run_program(stack_values("dev"), "dev", program)
