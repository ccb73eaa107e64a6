"""Optional batch run in the cluster: `inference_app batch` as a Job against the in-cluster Service.

The Job's pod reaches GCS through Workload Identity: a Kubernetes SA mapped to a dedicated GCP SA
that may read the input bucket and write the output bucket, nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from components.k8s_objects import register
from components.manifests import Obj
from components.service_accounts import ServiceAccount, ServiceAccountArgs


@dataclass
class BatchJobArgs:
    project: str
    service_account: ServiceAccountArgs  # the Job's GCP identity (Workload Identity)
    input_bucket: str  # read
    output_bucket: str  # written
    service_account_object: Obj  # the Kubernetes SA (manifests.batch_service_account)
    job_object: Obj  # the Job (manifests.batch_job)
    workload: pulumi.Resource  # the Job starts once the model server is Available
    identity_pool_ready: Sequence[pulumi.Resource]  # the cluster: it creates `<project>.svc.id.goog`


class BatchJob(pulumi.ComponentResource):
    job_name: pulumi.Output[str]
    service_account_email: pulumi.Output[str]

    def __init__(self, name: str, args: BatchJobArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tpu-pathways-inference:index:BatchJob", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ksa = args.service_account_object["metadata"]
        sa = ServiceAccount(f"{name}-gsa", args.service_account, opts=child)
        grants = [
            gcp.storage.BucketIAMMember(
                f"{name}-input-reader",
                bucket=args.input_bucket,
                role="roles/storage.objectViewer",
                member=sa.member,
                opts=child,
            ),
            gcp.storage.BucketIAMMember(
                f"{name}-output-writer",
                bucket=args.output_bucket,
                role="roles/storage.objectUser",
                member=sa.member,
                opts=child,
            ),
            gcp.serviceaccount.IAMMember(
                f"{name}-workload-identity",
                service_account_id=pulumi.Output.concat(
                    "projects/", args.project, "/serviceAccounts/", sa.email
                ),
                role="roles/iam.workloadIdentityUser",
                member=f"serviceAccount:{args.project}.svc.id.goog[{ksa['namespace']}/{ksa['name']}]",
                # The identity pool exists once a cluster with Workload Identity does; binding to it
                # earlier fails with "Identity Pool does not exist".
                opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.identity_pool_ready)),
            ),
        ]
        ksa_resource = register(
            f"{name}-ksa",
            args.service_account_object,
            pulumi.ResourceOptions(parent=self, depends_on=[args.workload]),
        )
        register(
            f"{name}-job",
            args.job_object,
            pulumi.ResourceOptions(parent=self, depends_on=[ksa_resource, args.workload, *grants]),
        )
        self.job_name = pulumi.Output.from_input(str(args.job_object["metadata"]["name"]))
        self.service_account_email = sa.email
        self.register_outputs(
            {"job_name": self.job_name, "service_account_email": self.service_account_email}
        )
