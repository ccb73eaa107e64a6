"""The serving workload: namespace, LeaderWorkerSet, ClusterIP Service and optional autoscaler
(an HPA plus the PodMonitoring that feeds it its metric)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components import catalog, manifests
from components.config import StackConfig
from components.k8s_objects import register


@dataclass
class InferenceWorkloadArgs:
    config: StackConfig
    controller: pulumi.Resource  # the LWS controller install; the CR is created after it
    after: list[pulumi.Resource]  # e.g. the scratch bucket and TPU pools (nothing to wait for if empty)


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
        c = args.config
        deps: list[pulumi.Resource] = [args.controller, *args.after]
        ns = manifests.namespace(c)
        if ns is not None:
            deps.append(register(f"{name}-namespace", ns, pulumi.ResourceOptions(parent=self)))
        lws = register(
            f"{name}-lws",
            manifests.leader_worker_set(c),
            pulumi.ResourceOptions(
                parent=self,
                depends_on=deps,
                # The HPA owns spec.replicas once autoscaling is on.
                ignore_changes=["spec.replicas"] if c.autoscaling.enabled else None,
            ),
        )
        register(
            f"{name}-service", manifests.service(c), pulumi.ResourceOptions(parent=self, depends_on=deps)
        )
        monitoring = manifests.pod_monitoring(c)
        hpa = manifests.horizontal_pod_autoscaler(c)
        if monitoring is not None and hpa is not None:
            # The PodMonitoring is what makes the HPA's metric exist; create it first.
            source = register(
                f"{name}-podmonitoring", monitoring, pulumi.ResourceOptions(parent=self, depends_on=[lws])
            )
            register(f"{name}-hpa", hpa, pulumi.ResourceOptions(parent=self, depends_on=[lws, source]))
        self.lws = lws
        port = catalog.HTTP_PORT
        leader = f"{c.serving.name}-0"  # LWS names the first group's leader <lws>-0
        self.namespace = pulumi.Output.from_input(c.serving.namespace)
        self.service_name = pulumi.Output.from_input(c.serving.service_name)
        self.leader_pod_name = pulumi.Output.from_input(leader)
        self.port_forward_command = pulumi.Output.from_input(
            f"kubectl port-forward -n {c.serving.namespace} pod/{leader} {port}:{port}"
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
