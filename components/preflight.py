"""Pre-flight checks that need the cloud: run before any resource is registered, in `preview` too.

The config rules (config_rules.py) judge the config alone; these read live state through provider
invokes, which `pulumi preview` executes as well, so a stack that would fail halfway through its
first `up` (after TPU slices were created) fails its preview instead, with the field and the fix:
- the release channel's GKE version (or `cluster.min_master_version`) is offered in the location
  and new enough for the TPU generation and capacity type;
- the zone offers the TPU machine type;
- the checkpoint exists in a format the engine reads (GGUF file, Hugging Face directory or MaxText
  checkpoint, told apart by the object listing: `checkpoint_format.py`), with what that format
  needs (a tokenizer for MaxText with inference-app, no OCDBT where Pathways persistence reads it);
- its bucket's IAM policy can be read and amended (the stack grants the TPU nodes' service account
  read access to it), and the same for the tokenizer's bucket.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TypeVar

import pulumi
import pulumi_gcp as gcp

from components import catalog, manifests
from components.checkpoint_format import NAMES, ORBAX_MARKERS, Listing, classify, has_tokenizer
from components.config import StackConfig
from components.config_rules import gcs_bucket, gke_version_key

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


def _object_names(path: str) -> list[str]:
    """The gs:// URLs of the objects whose names start with `path`'s (raises InvokeFailed)."""
    bucket = gcs_bucket(path)
    prefix = path[len(f"gs://{bucket}/") :]
    listing = _invoke(lambda: gcp.storage.get_bucket_objects(bucket=bucket, prefix=prefix))
    return [f"gs://{bucket}/{o.name}" for o in listing.bucket_objects]


def format_problems(c: StackConfig, found: Listing) -> list[str]:
    """What the listing says against what the engine reads and what the config declares."""
    path, engine = c.model.checkpoint, c.serving.engine
    if found.format is None:
        readable = (
            NAMES["maxtext"]
            if engine == "jetstream-maxtext"
            else f"{NAMES['gguf']}, {NAMES['huggingface']} or {NAMES['maxtext']}"
        )
        where = f"{path.rstrip('/')}/{found.deeper}"
        hint = f"; there is one at {where}: point model.checkpoint there" if found.deeper else ""
        return [
            f"model.checkpoint: no checkpoint at {path} (a MaxText one has {' or '.join(ORBAX_MARKERS)} "
            f"at its top); serving.engine {engine} reads {readable}{hint}"
        ]
    name = NAMES[found.format]
    if engine == "jetstream-maxtext":
        if found.format == "maxtext":
            return []
        return [
            f"model.checkpoint: {path} is {name}; serving.engine jetstream-maxtext reads only MaxText "
            'checkpoints: convert it (the guide\'s "Creating inference checkpoints") or set '
            "serving.engine: inference-app, which reads it as it is"
        ]
    if found.format != "maxtext":
        if c.model.hf_tokenizer_path is None:
            return []
        return [f"model.hf_tokenizer_path: {path} is {name}, which carries its own tokenizer; remove it"]
    out = []
    if c.model_spec.maxtext_name is None:
        out.append(
            f"model.checkpoint: {path} is {name}, but model.name {c.model.name} has no MaxText "
            "architecture to restore it into; choose the model it holds"
        )
    elif c.model.hf_tokenizer_path is None:
        out.append(
            f"model.hf_tokenizer_path: required: {path} is {name}, which carries no tokenizer; set it "
            f"to the gs:// Hugging Face directory (with tokenizer.json) of {c.model.name}"
        )
    env = manifests.inference_app_env(c, maxtext=True)
    if found.ocdbt and env.get(catalog.PATHWAYS_PERSISTENCE_ENV) == "1":
        out.append(
            f"model.checkpoint: {path} was saved with OCDBT (manifest.ocdbt); inference-app restores "
            f"MaxText checkpoints with {catalog.PATHWAYS_PERSISTENCE_ENV}=1 (the TPU workers read their "
            "shards from GCS), which needs one saved without it: re-save it with MaxText's "
            "checkpoint_storage_use_ocdbt=false checkpoint_storage_use_zarr3=false (or set "
            f"serving.model_server_env.{catalog.PATHWAYS_PERSISTENCE_ENV}: 0 to read it through the "
            "leader pod, slow for a large model)"
        )
    return out


def _tokenizer_problems(c: StackConfig) -> list[str]:
    path = c.model.hf_tokenizer_path
    if path is None:
        return []
    try:
        names = _object_names(path)
    except InvokeFailed as err:
        return [f"model.hf_tokenizer_path: cannot list gs://{gcs_bucket(path)} ({err})"]
    if has_tokenizer(path, names):
        return []
    return [
        f"model.hf_tokenizer_path: no tokenizer.json at {path}; point it at the Hugging Face directory "
        f"of {c.model.name} (or its tokenizer.json)"
    ]


def _policy_problems(field: str, bucket: str) -> list[str]:
    try:
        _invoke(lambda: gcp.storage.get_bucket_iam_policy(bucket=bucket))
    except InvokeFailed as err:
        return [
            f"{field}: the stack grants the TPU nodes roles/storage.objectViewer on gs://{bucket}, "
            f"but its IAM policy cannot be read ({err}); give the deploying identity "
            "roles/storage.admin on that bucket, or grant the nodes' account read access yourself"
        ]
    return []


def checkpoint_problems(c: StackConfig, *, grants_read: bool, tokenizer: bool = True) -> list[str]:
    """The checkpoint exists in a format the engine reads; the buckets' policies are readable where
    the stack adds the nodes' grant. `tokenizer=False`: its path is a placeholder, not read."""
    path = c.model.checkpoint
    try:
        names = _object_names(path)
    except InvokeFailed as err:
        return [
            f"model.checkpoint: cannot list gs://{c.checkpoint_bucket} ({err}); check the bucket name and "
            "that the deploying identity may read it"
        ]
    if not names:
        return [f"model.checkpoint: nothing exists under {path}; upload the checkpoint first"]
    found = classify(path, names)
    if found.format is not None:
        saved = " saved with OCDBT" if found.ocdbt else ""
        pulumi.log.info(f"model.checkpoint: {path} is {NAMES[found.format]}{saved}")
    problems = format_problems(c, found)
    if tokenizer:
        problems += _tokenizer_problems(c)
    if grants_read:
        problems += _policy_problems("model.checkpoint", c.checkpoint_bucket)
        if tokenizer and c.tokenizer_bucket is not None:
            problems += _policy_problems("model.hf_tokenizer_path", c.tokenizer_bucket)
    return problems


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
        problems += checkpoint_problems(
            c, grants_read=grants_read, tokenizer="model.hf_tokenizer_path" not in skip
        )
    return problems
