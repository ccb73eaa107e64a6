"""The per-stack Pathways scratch bucket and the TPU nodes' access to it, the checkpoint and its tokenizer.

The guide points Pathways at Google's shared `gs://cloud-pathways-staging/tmp`, which is not ours to
write; each stack gets its own private bucket instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp


@dataclass
class ScratchStorageArgs:
    project: str
    bucket_name: str
    location: str  # the TPUs' region, upper case as GCS spells it
    force_destroy: bool
    retention_days: int
    labels: Mapping[str, str]
    checkpoint_bucket: str  # the nodes get read access to it
    tokenizer_bucket: str | None  # another bucket the model server reads (its tokenizer), or None
    node_member: pulumi.Input[str] | None  # "serviceAccount:<email>" of the TPU nodes; None: grant nothing


class ScratchStorage(pulumi.ComponentResource):
    bucket_name: pulumi.Output[str]
    scratch_location: pulumi.Output[str]

    def __init__(
        self, name: str, args: ScratchStorageArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("tpu-pathways-inference:index:ScratchStorage", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        bucket = gcp.storage.Bucket(
            f"{name}-scratch",
            name=args.bucket_name,
            project=args.project,
            location=args.location,
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            force_destroy=args.force_destroy,
            lifecycle_rules=[{"action": {"type": "Delete"}, "condition": {"age": args.retention_days}}],
            labels=dict(args.labels),
            opts=child,
        )
        if args.node_member is not None:
            grants: list[tuple[str, pulumi.Input[str], str]] = [
                ("scratch-object-admin", bucket.name, "roles/storage.objectAdmin"),
                ("checkpoint-reader", args.checkpoint_bucket, "roles/storage.objectViewer"),
            ]
            if args.tokenizer_bucket is not None:
                grants.append(("tokenizer-reader", args.tokenizer_bucket, "roles/storage.objectViewer"))
            for suffix, target, role in grants:
                gcp.storage.BucketIAMMember(
                    f"{name}-{suffix}", bucket=target, role=role, member=args.node_member, opts=child
                )
        self.bucket_name = bucket.name
        self.scratch_location = pulumi.Output.concat("gs://", bucket.name, "/tmp")
        self.register_outputs({"bucket_name": self.bucket_name, "scratch_location": self.scratch_location})
