"""The per-stack Pathways scratch bucket and the TPU nodes' access to it and to the checkpoint.

The guide points Pathways at Google's shared `gs://cloud-pathways-staging/tmp`, which is not ours to
write; each stack gets its own private bucket instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from components.config import StackConfig
from components.config_rules import gcs_bucket


@dataclass
class ScratchStorageArgs:
    config: StackConfig
    node_member: pulumi.Input[str] | None  # "serviceAccount:<email>" of the TPU nodes; None: grant nothing


class ScratchStorage(pulumi.ComponentResource):
    bucket_name: pulumi.Output[str]
    scratch_location: pulumi.Output[str]

    def __init__(
        self, name: str, args: ScratchStorageArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("tpu-pathways-inference:index:ScratchStorage", name, None, opts)
        c = args.config
        child = pulumi.ResourceOptions(parent=self)
        bucket = gcp.storage.Bucket(
            f"{name}-scratch",
            name=c.scratch_bucket,
            project=c.project,
            location=c.region.upper(),
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            force_destroy=c.storage.force_destroy,
            lifecycle_rules=[
                {"action": {"type": "Delete"}, "condition": {"age": c.storage.scratch_retention_days}}
            ],
            labels={"managed-by": "pulumi", "stack": c.stack},
            opts=child,
        )
        if args.node_member is not None:
            gcp.storage.BucketIAMMember(
                f"{name}-scratch-object-admin",
                bucket=bucket.name,
                role="roles/storage.objectAdmin",
                member=args.node_member,
                opts=child,
            )
            gcp.storage.BucketIAMMember(
                f"{name}-checkpoint-reader",
                bucket=gcs_bucket(c.model.checkpoint),
                role="roles/storage.objectViewer",
                member=args.node_member,
                opts=child,
            )
        self.bucket_name = bucket.name
        self.scratch_location = pulumi.Output.concat("gs://", bucket.name, "/tmp")
        self.register_outputs({"bucket_name": self.bucket_name, "scratch_location": self.scratch_location})
