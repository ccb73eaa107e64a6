"""The serving workload: namespace, LeaderWorkerSet, ClusterIP Service and optional autoscaler
(an HPA plus the PodMonitoring that feeds it its metric)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components import catalog
from components.k8s_objects import register
from components.manifests import Obj


@dataclass
class WorkloadObjects:
    """The rendered Kubernetes objects of the serving workload (see `manifests`)."""

    namespace: Obj | None  # None: the namespace exists already (default)
    leader_worker_set: Obj
    service: Obj
    pod_monitoring: Obj | None  # with autoscaling only, as is the HPA
    autoscaler: Obj | None


@dataclass
class InferenceWorkloadArgs:
    objects: WorkloadObjects
    controller: pulumi.Resource  # the LWS controller install; the CR is created after it
    after: list[pulumi.Resource]  # e.g. the scratch bucket and TPU pools (nothing to wait for if empty)
    metrics_api: list[pulumi.Resource]  # what serves the HPA's metric (the metrics adapter), if any


class InferenceWorkload(pulumi.ComponentResource):
    lws: pulumi.CustomResource  # the LeaderWorkerSet (the batch Job waits for it)
    namespace: pulumi.Output[str]
    service_name: pulumi.Output[str]
    leader_pod_name: pulumi.Output[str]
    port_forward_command: pulumi.Output[str]
    curl_command: pulumi.Output[str]

    def __init__(
        self, name: str, args: InferenceWorkloadArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("tpu-pathways-inference:index:InferenceWorkload", name, None, opts)
        o = args.objects
        deps: list[pulumi.Resource] = [args.controller, *args.after]
        if o.namespace is not None:
            deps.append(register(f"{name}-namespace", o.namespace, pulumi.ResourceOptions(parent=self)))
        lws = register(
            f"{name}-lws",
            o.leader_worker_set,
            pulumi.ResourceOptions(
                parent=self,
                depends_on=deps,
                # The HPA owns spec.replicas once autoscaling is on.
                ignore_changes=["spec.replicas"] if o.autoscaler is not None else None,
            ),
        )
        register(f"{name}-service", o.service, pulumi.ResourceOptions(parent=self, depends_on=deps))
        if o.pod_monitoring is not None and o.autoscaler is not None:
            # The PodMonitoring is what makes the HPA's metric exist; create it first.
            source = register(
                f"{name}-podmonitoring",
                o.pod_monitoring,
                pulumi.ResourceOptions(parent=self, depends_on=[lws]),
            )
            register(
                f"{name}-hpa",
                o.autoscaler,
                pulumi.ResourceOptions(parent=self, depends_on=[lws, source, *args.metrics_api]),
            )
        self.lws = lws
        port = catalog.HTTP_PORT
        namespace = str(o.leader_worker_set["metadata"]["namespace"])
        leader = f"{o.leader_worker_set['metadata']['name']}-0"  # LWS names the first group's leader <lws>-0
        self.namespace = pulumi.Output.from_input(namespace)
        self.service_name = pulumi.Output.from_input(str(o.service["metadata"]["name"]))
        self.leader_pod_name = pulumi.Output.from_input(leader)
        self.port_forward_command = pulumi.Output.from_input(
            f"kubectl port-forward -n {namespace} pod/{leader} {port}:{port}"
        )
        self.curl_command = pulumi.Output.from_input(
            f"curl -s -X POST -H 'Content-type: application/json' localhost:{port}/generate "
            """-d '{"prompt": "What are the top 5 programming languages", "max_tokens": 200}'"""
        )
        self.register_outputs(
            {
                "namespace": self.namespace,
                "service_name": self.service_name,
                "leader_pod_name": self.leader_pod_name,
                "port_forward_command": self.port_forward_command,
                "curl_command": self.curl_command,
            }
        )
