"""Recording Pulumi mocks: run the real program offline and capture the whole resource graph.

Used by `preview` and the tests. Mocks are keyed on type tokens: every resource type the program
may register has an entry computing the outputs the cloud would return, and every invoke (the
pre-flight checks' reads of live cloud state) has an entry answering like a healthy project. An
unknown type or invoke fails loudly, so a new dependency on live cloud data cannot slip into the
program unnoticed; tests replace single invoke answers to simulate a project that is not ready.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime.settings import ROOT, SETTINGS
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from components.config import PROJECT


def _account(inputs: dict[str, Any]) -> dict[str, Any]:
    email = f"{inputs['accountId']}@{inputs['project']}.iam.gserviceaccount.com"
    return {"email": email, "member": f"serviceAccount:{email}", "uniqueId": "100000000000000000000"}


def _cluster(inputs: dict[str, Any]) -> dict[str, Any]:
    # Documentation address range (RFC 5737) and a dummy CA: nothing real.
    return {
        "endpoint": "203.0.113.10",
        "masterAuth": {"clusterCaCertificate": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t"},
    }


def _bucket(inputs: dict[str, Any]) -> dict[str, Any]:
    return {
        "url": f"gs://{inputs['name']}",
        "selfLink": f"https://www.googleapis.com/storage/v1/b/{inputs['name']}",
    }


def _none(inputs: dict[str, Any]) -> dict[str, Any]:
    return {}


def _self_link(kind: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def outputs(inputs: dict[str, Any]) -> dict[str, Any]:
        region = f"regions/{inputs['region']}/" if "region" in inputs else "global/"
        return {
            "selfLink": f"https://www.googleapis.com/compute/v1/projects/{inputs['project']}/{region}{kind}/{inputs['name']}"
        }

    return outputs


# type token -> extra outputs beyond the echoed inputs
MOCKED_TYPES: Mapping[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "gcp:serviceaccount/account:Account": _account,
    "gcp:container/cluster:Cluster": _cluster,
    "gcp:container/nodePool:NodePool": _none,
    "gcp:compute/network:Network": _self_link("networks"),
    "gcp:compute/subnetwork:Subnetwork": _self_link("subnetworks"),
    "gcp:compute/router:Router": _self_link("routers"),
    "gcp:compute/routerNat:RouterNat": _none,
    "gcp:storage/bucket:Bucket": _bucket,
    "gcp:storage/bucketIAMMember:BucketIAMMember": _none,
    "gcp:projects/iAMMember:IAMMember": _none,
    "gcp:serviceaccount/iAMMember:IAMMember": _none,
    "pulumi:providers:kubernetes": _none,
    "kubernetes:yaml/v2:ConfigFile": lambda _: {"resources": []},
    "kubernetes:leaderworkerset.x-k8s.io/v1:LeaderWorkerSet": _none,
    "kubernetes:core/v1:Namespace": _none,
    "kubernetes:core/v1:Service": _none,
    "kubernetes:core/v1:ServiceAccount": _none,
    "kubernetes:batch/v1:Job": _none,
    "kubernetes:autoscaling/v2:HorizontalPodAutoscaler": _none,
    "kubernetes:monitoring.googleapis.com/v1:PodMonitoring": _none,
}
COMPONENT_PREFIX = f"{PROJECT}:index:"

# Answers of a healthy project, in the wire form (camelCase) the provider returns. The versions are
# shaped like GKE's (each channel's default; valid versions newest first) and are above every TPU
# generation's and flex-start's minimum.
MOCK_GKE_VERSIONS: Mapping[str, Any] = {
    "defaultClusterVersion": "1.34.1-gke.1829001",
    "latestMasterVersion": "1.35.0-gke.1403000",
    "releaseChannelDefaultVersion": {
        "RAPID": "1.35.0-gke.1403000",
        "REGULAR": "1.34.1-gke.1829001",
        "STABLE": "1.33.5-gke.1308000",
    },
    "releaseChannelLatestVersion": {
        "RAPID": "1.35.0-gke.1403000",
        "REGULAR": "1.34.1-gke.1829001",
        "STABLE": "1.33.5-gke.1308000",
    },
    "validMasterVersions": [
        "1.35.0-gke.1403000",
        "1.34.1-gke.1829001",
        "1.33.5-gke.1308000",
        "1.32.9-gke.1108000",
    ],
}
MOCK_PROJECT_NUMBER = "123456789012"

InvokeAnswer = dict[str, Any] | tuple[dict[str, Any], list[tuple[str, str]]]


def _engine_versions(args: dict[str, Any]) -> InvokeAnswer:
    return {**MOCK_GKE_VERSIONS, "location": args.get("location"), "project": args.get("project")}


def _machine_types(args: dict[str, Any]) -> InvokeAnswer:
    # The filter is `name = <machine type>`: the zone offers exactly what was asked for.
    name = str(args.get("filter", "")).rpartition("=")[2].strip()
    return {"zone": args.get("zone"), "machineTypes": [{"name": name, "guestCpus": 180}]}


# Under any directory prefix: a MaxText checkpoint saved without OCDBT (Orbax's metadata files and
# one directory per array), which both engines restore; it holds a tokenizer.json too, so the same
# answer serves the listing of `model.hf_tokenizer_path`. A `.gguf` prefix is the file itself.
MOCK_CHECKPOINT_OBJECTS = (
    "_CHECKPOINT_METADATA",
    "_METADATA",
    "params.params.decoder.decoder_norm.scale/.zarray",
    "params.params.decoder.decoder_norm.scale/0",
    "tokenizer.json",
)


def _bucket_objects(args: dict[str, Any]) -> InvokeAnswer:
    prefix = str(args.get("prefix", "")).rstrip("/")
    names = [prefix] if prefix.endswith(".gguf") else [f"{prefix}/{n}" for n in MOCK_CHECKPOINT_OBJECTS]
    return {"bucket": args.get("bucket"), "bucketObjects": [{"name": n} for n in names]}


def _bucket_iam_policy(args: dict[str, Any]) -> InvokeAnswer:
    return {"bucket": args.get("bucket"), "etag": "BwYmock=", "policyData": '{"bindings": []}'}


def _project(args: dict[str, Any]) -> InvokeAnswer:
    return {"projectId": args.get("projectId"), "number": MOCK_PROJECT_NUMBER}


MOCKED_INVOKES: Mapping[str, Callable[[dict[str, Any]], InvokeAnswer]] = {
    "gcp:container/getEngineVersions:getEngineVersions": _engine_versions,
    "gcp:compute/getMachineTypes:getMachineTypes": _machine_types,
    "gcp:storage/getBucketObjects:getBucketObjects": _bucket_objects,
    "gcp:storage/getBucketIamPolicy:getBucketIamPolicy": _bucket_iam_policy,
    "gcp:organizations/getProject:getProject": _project,
}


class UnmockedCallError(RuntimeError):
    """The program asked for something only a live cloud could answer."""


@dataclass
class ResourceRecord:
    type: str
    name: str
    urn: str
    parent: str
    dependencies: list[str]
    provider: str
    custom: bool
    ignore_changes: list[str]
    inputs: dict[str, Any]


@dataclass
class InvokeRecord:
    token: str
    args: dict[str, Any]


@dataclass
class Recording:
    resources: list[ResourceRecord] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    invokes: list[InvokeRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    infos: list[str] = field(default_factory=list)  # `pulumi.log.info` (what pre-flight found, ...)

    def by_type(self, type_: str) -> list[ResourceRecord]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str) -> ResourceRecord:
        found = self.by_type(type_)
        if len(found) != 1:
            raise AssertionError(f"expected one {type_}, found {len(found)}")
        return found[0]

    def by_urn(self, urn: str) -> ResourceRecord:
        return next(r for r in self.resources if r.urn == urn)


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(
        self,
        recording: Recording,
        invokes: Mapping[str, Callable[[dict[str, Any]], InvokeAnswer]] | None = None,
    ) -> None:
        self.recording = recording
        self.invokes = {**MOCKED_INVOKES, **(invokes or {})}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        if args.typ.startswith(COMPONENT_PREFIX):
            return None, {}
        compute = MOCKED_TYPES.get(args.typ)
        if compute is None:
            raise UnmockedCallError(
                f"resource type {args.typ!r} ({args.name}) has no mock; add it to MOCKED_TYPES"
            )
        return f"{args.name}-id", {**args.inputs, **compute(args.inputs)}

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        answer = self.invokes.get(args.token)
        if answer is None:
            raise UnmockedCallError(
                f"unmocked invoke {args.token!r}: add it to MOCKED_INVOKES (with a healthy project's answer)"
            )
        self.recording.invokes.append(InvokeRecord(args.token, dict(args.args)))
        result = answer(dict(args.args))
        return result if isinstance(result, tuple) else (result, [])


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    def __init__(self, mocks: pulumi.runtime.Mocks, recording: Recording) -> None:
        super().__init__(mocks)
        self.recording = recording

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.recording.resources.append(
                ResourceRecord(
                    type=request.type,
                    name=request.name,
                    urn=response.urn,
                    parent=request.parent,
                    dependencies=sorted(request.dependencies),
                    provider=request.provider,
                    custom=bool(request.custom),
                    ignore_changes=list(request.ignoreChanges),
                    inputs=rpc.deserialize_properties(request.object),
                )
            )
        return response


class _MessagesHandler(logging.Handler):
    """Collects the program's `pulumi.log.warn` (placeholders under preview, ...) and `info` messages."""

    def __init__(self, recording: Recording) -> None:
        super().__init__(level=logging.INFO)
        self.recording = recording

    def emit(self, record: logging.LogRecord) -> None:
        found = self.recording.warnings if record.levelno >= logging.WARNING else self.recording.infos
        found.append(record.getMessage())


def _resolve(value: Any) -> Any:
    if isinstance(value, pulumi.Output):
        if _sync_await(value.is_secret()):
            return "[secret]"
        return _sync_await(value.future())
    return value


def ensure_event_loop() -> None:
    """Pulumi's mocks run on the thread's current event loop; an earlier `asyncio.run` in the same
    process (an async client, Orbax) leaves the main thread with none: "There is no current event
    loop". Give it a new one then."""
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())


def run_program(
    config: Mapping[str, Any],
    stack: str,
    program: Callable[[], object],
    *,
    preview: bool = True,
    recording: Recording | None = None,
    invokes: Mapping[str, Callable[[dict[str, Any]], InvokeAnswer]] | None = None,
) -> Recording:
    """Run `program` (e.g. the real `__main__.py`) with `config` as the stack's config.

    Object values are passed as JSON strings, as the Pulumi engine does. Exceptions raised by the
    program (invalid config, unmocked calls) propagate; pass `recording` to inspect what was
    registered before a failure. `invokes` replaces single invoke answers (a project not ready).
    """
    recording = Recording() if recording is None else recording
    mocks = RecordingMocks(recording, invokes)
    ensure_event_loop()
    ROOT.set(None)  # a fresh root stack per run (several runs share one test process)
    logger = logging.getLogger(f"{__name__}.{id(recording)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.handlers = [_MessagesHandler(recording)]
    pulumi.runtime.set_mocks(
        mocks,
        project=PROJECT,
        stack=stack,
        preview=preview,
        logger=logger,
        monitor=_RecordingMonitor(mocks, recording),
    )
    pulumi.runtime.set_all_config(
        {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}, secret_keys=[]
    )
    SETTINGS.rpc_manager.clear()
    SETTINGS.outputs.clear()

    def run() -> None:
        program()

    _sync_await(run_pulumi_func(run))
    root = ROOT.get()
    exported = getattr(root, "outputs", {}) if root is not None else {}
    recording.outputs = {k: _resolve(v) for k, v in exported.items()}
    return recording
