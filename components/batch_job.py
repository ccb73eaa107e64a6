"""Optional batch run in the cluster: `inference_app batch` as a Job against the in-cluster Service.

The Job's pod reaches GCS through Workload Identity: a Kubernetes SA mapped to a dedicated GCP SA
that may read the input bucket and write the output bucket, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from components import manifests
from components.config import StackConfig
from components.config_rules import gcs_bucket
from components.k8s_objects import register
from components.service_accounts import ServiceAccount, ServiceAccountArgs


@dataclass
class BatchJobArgs:
    config: StackConfig
    workload: pulumi.Resource  # the Job starts once the model server is Available


class BatchJob(pulumi.ComponentResource):
    job_name: pulumi.Output[str]
    service_account_email: pulumi.Output[str]

    def __init__(self, name: str, args: BatchJobArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tpu-pathways-inference:index:BatchJob", name, None, opts)
        c = args.config
        b = c.batch_job
        assert b.input is not None and b.output is not None  # validated
        child = pulumi.ResourceOptions(parent=self)
        sa = ServiceAccount(
            f"{name}-gsa",
            ServiceAccountArgs(
                project=c.project,
                account_id=c.batch_service_account_id,
                display_name=f"Batch job ({c.stack})",
            ),
            opts=child,
        )
        grants = [
            gcp.storage.BucketIAMMember(
                f"{name}-input-reader",
                bucket=gcs_bucket(b.input),
                role="roles/storage.objectViewer",
                member=sa.member,
                opts=child,
            ),
            gcp.storage.BucketIAMMember(
                f"{name}-output-writer",
                bucket=gcs_bucket(b.output),
                role="roles/storage.objectUser",
                member=sa.member,
                opts=child,
            ),
            gcp.serviceaccount.IAMMember(
                f"{name}-workload-identity",
                service_account_id=pulumi.Output.concat(
                    "projects/", c.project, "/serviceAccounts/", sa.email
                ),
                role="roles/iam.workloadIdentityUser",
                member=f"serviceAccount:{c.project}.svc.id.goog[{c.serving.namespace}/{b.name}]",
                opts=child,
            ),
        ]
        ksa_obj = manifests.batch_service_account(c)
        job_obj = manifests.batch_job(c)
        assert ksa_obj is not None and job_obj is not None
        ksa = register(
            f"{name}-ksa", ksa_obj, pulumi.ResourceOptions(parent=self, depends_on=[args.workload])
        )
        register(
            f"{name}-job",
            job_obj,
            pulumi.ResourceOptions(parent=self, depends_on=[ksa, args.workload, *grants]),
        )
        self.job_name = pulumi.Output.from_input(b.name)
        self.service_account_email = sa.email
        self.register_outputs(
            {"job_name": self.job_name, "service_account_email": self.service_account_email}
        )
