"""The pack as the Pulumi CLI drives it: `policy/__main__.py` in its own process, spoken to over gRPC.

The CLI starts the pack, reads the port it prints on stdout, and calls the Analyzer service
(GetAnalyzerInfo, Configure, Analyze) on 127.0.0.1. Doing the same here checks the entry point,
the pack metadata and the round trip of properties through protobuf, with no CLI installed.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2, json_format, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc, plugin_pb2
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, UnknownValueError

from policy.policies import NODE_POOL, PACK_NAME, POLICIES
from tests.policy.helpers import resource_args, violations

PACK_DIR = Path(__file__).resolve().parents[2] / "policy"


@pytest.fixture(scope="module")
def analyzer() -> Iterator[analyzer_pb2_grpc.AnalyzerStub]:
    # The CLI runs the entry point with the pack directory as working directory.
    proc = subprocess.Popen(
        [sys.executable, str(PACK_DIR / "__main__.py")],
        cwd=PACK_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port_line = proc.stdout.readline().strip()
        if not port_line.isdigit():
            proc.kill()
            raise AssertionError(
                f"pack did not print its port: {port_line!r} {proc.communicate()[1][-2000:]}"
            )
        with grpc.insecure_channel(f"127.0.0.1:{port_line}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            yield analyzer_pb2_grpc.AnalyzerStub(channel)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _analyze(
    stub: analyzer_pb2_grpc.AnalyzerStub, resource_type: str, props: dict[str, Any], stack: str = "prod"
) -> list[Any]:
    properties = struct_pb2.Struct()
    properties.update(props)
    request = analyzer_pb2.AnalyzeRequest(
        type=resource_type,
        properties=properties,
        urn=f"urn:pulumi:{stack}::tpu-inference::{resource_type}::r",
        name="r",
        options=analyzer_pb2.AnalyzerResourceOptions(),
    )
    return list(stub.Analyze(request).diagnostics)


def test_pack_metadata_lists_every_policy_as_mandatory(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty())
    assert info.name == PACK_NAME
    assert sorted(p.name for p in info.policies) == sorted(p.name for p in POLICIES)
    mandatory = analyzer_pb2.EnforcementLevel.Value("MANDATORY")
    assert {p.enforcementLevel for p in info.policies} == {mandatory}
    schema = next(p.configSchema for p in info.policies if p.name == "production-cluster-deletion-protection")
    assert "nonProductionStacks" in json_format.MessageToDict(schema.properties)


def test_plugin_answers_version(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    assert isinstance(analyzer.GetPluginInfo(empty_pb2.Empty()), plugin_pb2.PluginInfo)


def test_violations_come_back_over_grpc(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    bad_bucket = _analyze(analyzer, "gcp:storage/bucket:Bucket", {"location": "US"})
    assert sorted(d.policyName for d in bad_bucket) == ["buckets-not-public", "buckets-not-public"]
    assert all(d.enforcementLevel == analyzer_pb2.EnforcementLevel.Value("MANDATORY") for d in bad_bucket)
    good_bucket = {"location": "US", "publicAccessPrevention": "enforced", "uniformBucketLevelAccess": True}
    assert _analyze(analyzer, "gcp:storage/bucket:Bucket", good_bucket) == []


def test_default_non_production_stack_applies_in_the_real_pack(
    analyzer: analyzer_pb2_grpc.AnalyzerStub,
) -> None:
    cluster = {"deletionProtection": False, "removeDefaultNodePool": True}
    on_dev = _analyze(analyzer, "gcp:container/cluster:Cluster", cluster, stack="dev")
    on_prod = _analyze(analyzer, "gcp:container/cluster:Cluster", cluster, stack="prod")
    assert on_dev == []
    assert [d.policyName for d in on_prod] == ["production-cluster-deletion-protection"]


def test_value_unknown_during_preview_is_deferred_to_the_update() -> None:
    """A node SA created in the same stack is unknown at preview: the SDK turns the raised
    UnknownValueError into an advisory note and the check runs for real at `pulumi up`."""
    pool = {"nodeConfig": {"machineType": "e2-standard-4", "serviceAccount": UNKNOWN_STRING_VALUE}}
    with pytest.raises(UnknownValueError):
        violations("no-default-compute-service-account", resource_args(NODE_POOL, pool))


def test_unknown_value_over_grpc_is_advisory(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    pool = {"nodeConfig": {"machineType": "e2-standard-4", "serviceAccount": UNKNOWN_STRING_VALUE}}
    (diagnostic,) = _analyze(analyzer, NODE_POOL, pool)
    assert diagnostic.enforcementLevel == analyzer_pb2.EnforcementLevel.Value("ADVISORY")
    assert "during preview" in diagnostic.message
