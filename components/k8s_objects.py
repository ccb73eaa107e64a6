"""Register a rendered Kubernetes object (a dict from `manifests`) as its typed Pulumi resource.

One mapping from kind to resource class, so every component applies exactly what `render` prints.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

_TYPED: dict[tuple[str, str], Any] = {
    ("v1", "Namespace"): k8s.core.v1.Namespace,
    ("v1", "Service"): k8s.core.v1.Service,
    ("v1", "ServiceAccount"): k8s.core.v1.ServiceAccount,
    ("batch/v1", "Job"): k8s.batch.v1.Job,
    ("autoscaling/v2", "HorizontalPodAutoscaler"): k8s.autoscaling.v2.HorizontalPodAutoscaler,
}


def register(resource_name: str, obj: dict[str, Any], opts: pulumi.ResourceOptions) -> pulumi.CustomResource:
    """Create the Pulumi resource for `obj`; unknown built-in kinds are a programming error."""
    api_version, kind = obj["apiVersion"], obj["kind"]
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
    cls = _TYPED.get((api_version, kind))
    if cls is not None:
        resource: pulumi.CustomResource = cls(resource_name, opts=opts, **body)
        return resource
    if "." not in api_version.split("/")[0]:
        raise ValueError(f"no typed resource registered for built-in {api_version} {kind}")
    return k8s.apiextensions.CustomResource(
        resource_name,
        api_version=api_version,
        kind=kind,
        metadata=body.get("metadata"),
        spec=body.get("spec"),
        opts=opts,
    )
