"""Pre-flight checks that need the cloud: run before any resource is registered, in `preview` too.

The config rules (config_rules.py) judge the config alone; these read live state through provider
invokes, which `pulumi preview` executes as well, so a stack that would fail halfway through its
first `up` (after TPU slices were created) fails its preview instead, with the field and the fix:
- the release channel's GKE version (or `cluster.min_master_version`) is offered in the location
  and new enough for the TPU generation and capacity type;
- the zone offers the TPU machine type;
- the checkpoint exists, and its bucket's IAM policy can be read and amended (the stack grants the
  TPU nodes' service account read access to it).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TypeVar

import pulumi_gcp as gcp

from components.config import StackConfig
from components.config_rules import gke_version_key

_T = TypeVar("_T")


class InvokeFailed(Exception):
    """A provider invoke answered with an error (not found, permission denied, API disabled)."""


def _invoke(read: Callable[[], _T]) -> _T:
    """Run one invoke; the SDK reports its failure as `Exception("invoke of <token> failed: ...")`."""
    try:
        return read()
    except Exception as err:  # the SDK raises a bare Exception for failed invokes
        if str(err).startswith("invoke of "):
            raise InvokeFailed(str(err)) from None
        raise


def _newer(a: str, b: str) -> bool:
    """a >= b as GKE versions (prefixes like 1.33 compare as their newest patch)."""
    ka, kb = gke_version_key(a), gke_version_key(b)
    return ka is not None and kb is not None and ka >= kb


def gke_version_problems(c: StackConfig) -> list[str]:
    """The version GKE will create the cluster at must be offered and new enough."""
    try:
        versions = _invoke(
            lambda: gcp.container.get_engine_versions(location=c.cluster_location, project=c.project)
        )
    except InvokeFailed as err:
        return [
            f"cluster.zone: cannot list GKE versions in {c.cluster_location} ({err}); is the GKE API enabled?"
        ]
    channel = c.cluster.release_channel
    required = c.required_gke_version
    needs = "flex-start TPUs need" if c.tpu.capacity == "flex-start" else f"TPU {c.generation.name} needs"
    valid = list(versions.valid_master_versions)
    wanted = c.cluster.min_master_version
    if wanted is None:
        default = versions.release_channel_default_version.get(channel)
        if default is None:
            return [f"cluster.release_channel: GKE offers no {channel} channel in {c.cluster_location}"]
        if _newer(default, required):
            return []
        newer = sorted({v.rsplit(".", 1)[0] for v in valid if _newer(v, required)})
        hint = f"set cluster.min_master_version: {newer[0]}" if newer else "choose a newer channel"
        return [
            f"cluster.release_channel: {channel} creates clusters at {default} in {c.cluster_location}; "
            f"{needs} GKE >= {required} ({hint}, or cluster.release_channel: RAPID)"
        ]
    if wanted.count(".") == 1:  # a minor prefix: GKE picks a patch of it
        offered = [v for v in valid if v.startswith(f"{wanted}.")]
        if not offered:
            return [
                f"cluster.min_master_version: no {wanted} version is offered in {c.cluster_location} "
                f"(offered: {', '.join(valid[:6])}); choose one of their minors"
            ]
        best = max(offered, key=lambda v: gke_version_key(v) or ())
        if not _newer(best, required):
            return [f"cluster.min_master_version: {wanted} tops out at {best}; {needs} GKE >= {required}"]
        return []
    if wanted not in valid:
        return [
            f"cluster.min_master_version: {wanted} is not offered in {c.cluster_location} any more "
            "(GKE removes old patches); use a minor like "
            f"{'.'.join(wanted.split('.')[:2])} or leave it unset for the channel's default"
        ]
    return []


def tpu_zone_problems(c: StackConfig) -> list[str]:
    """The zone must offer the TPU machine type (the node pool create fails after the cluster otherwise)."""
    machine_type = c.tpu.machine_type
    try:
        found = _invoke(
            lambda: gcp.compute.get_machine_types(
                zone=c.cluster.zone, project=c.project, filter=f"name = {machine_type}"
            )
        )
    except InvokeFailed as err:
        return [f"cluster.zone: cannot list machine types in {c.cluster.zone} ({err})"]
    if not any(m.name == machine_type for m in found.machine_types):
        return [
            f"cluster.zone: {c.cluster.zone} does not offer {machine_type} (TPU {c.generation.name}) to "
            f"project {c.project}; choose another zone of {', '.join(c.generation.zones)}"
        ]
    return []


def checkpoint_problems(c: StackConfig, *, grants_read: bool) -> list[str]:
    """The checkpoint exists; its bucket's policy is readable where the stack adds the nodes' grant."""
    bucket = c.checkpoint_bucket
    prefix = c.model.checkpoint[len(f"gs://{bucket}/") :]
    try:
        listing = _invoke(lambda: gcp.storage.get_bucket_objects(bucket=bucket, prefix=prefix))
    except InvokeFailed as err:
        return [
            f"model.checkpoint: cannot list gs://{bucket} ({err}); check the bucket name and that the "
            "deploying identity may read it"
        ]
    if not listing.bucket_objects:
        return [f"model.checkpoint: nothing exists under {c.model.checkpoint}; upload the checkpoint first"]
    if not grants_read:
        return []
    try:
        _invoke(lambda: gcp.storage.get_bucket_iam_policy(bucket=bucket))
    except InvokeFailed as err:
        return [
            f"model.checkpoint: the stack grants the TPU nodes roles/storage.objectViewer on gs://{bucket}, "
            f"but its IAM policy cannot be read ({err}); give the deploying identity "
            "roles/storage.admin on that bucket, or grant the nodes' account read access yourself"
        ]
    return []


def preflight_problems(c: StackConfig, *, skip: Collection[str] = ()) -> list[str]:
    """All pre-flight checks; `skip` names config paths still placeholders (their checks cannot run)."""
    if "project" in skip:
        return []  # every read needs the real project
    problems: list[str] = []
    if c.cluster.create:
        problems += gke_version_problems(c)
        problems += tpu_zone_problems(c)
    if "model.checkpoint" not in skip:
        grants_read = c.cluster.create or c.cluster.node_service_account is not None
        problems += checkpoint_problems(c, grants_read=grants_read)
    return problems
