"""Issue 11's defects: what mocks accepted but a real first `pulumi up` (or a second one) would not.

Each test names the cloud rule it stands for; the answers of the cloud (GKE versions, bucket
listings) come from invoke mocks that fail loudly for anything not listed (components/mocks.py).
"""

from __future__ import annotations

from typing import Any

import pulumi
import pytest

from components import catalog
from components.config import ConfigError
from components.mocks import MOCK_GKE_VERSIONS, InvokeAnswer, Recording

from .conftest import STACKS, app_model, stack_values, variant, variant_config
from .test_program import _everything, run_main

REAL_PROJECT = {"project": "my-real-project"}
CLUSTER = "gcp:container/cluster:Cluster"
POOL = "gcp:container/nodePool:NodePool"
ENGINE_VERSIONS = "gcp:container/getEngineVersions:getEngineVersions"


def _real(values: dict[str, Any], checkpoint: str = "gs://my-models/llama/ckpt") -> dict[str, Any]:
    """A stack's values with the placeholders replaced (what the deploy workflow does)."""
    out = dict(values)
    out["gcp:project"] = "my-real-project"
    out["tpu-pathways-inference:model"] = {**out["tpu-pathways-inference:model"], "checkpoint": checkpoint}
    return out


def _versions(**channel_defaults: str) -> dict[str, Any]:
    """getEngineVersions answers where the named channels default to older versions."""
    answer = {**MOCK_GKE_VERSIONS}
    answer["releaseChannelDefaultVersion"] = {**answer["releaseChannelDefaultVersion"], **channel_defaults}
    return answer


def _invokes(**answers: InvokeAnswer) -> dict[str, Any]:
    return {token: (lambda _args, a=answer: a) for token, answer in answers.items()}


# --------------------------------------------------------------- 1. the version is the channel's


@pytest.mark.parametrize("stack", STACKS)
def test_cluster_leaves_the_version_to_the_release_channel(stack: str) -> None:
    """An exact patch pin leaves GKE's supported list within months; create requests then fail."""
    inputs = run_main(stack_values(stack), stack).one(CLUSTER).inputs
    assert "minMasterVersion" not in inputs
    assert inputs["releaseChannel"] == {"channel": "REGULAR"}


def test_a_minor_version_prefix_is_passed_through() -> None:
    rec = run_main(variant("dev", cluster={"min_master_version": "1.33"}), "dev")
    assert rec.one(CLUSTER).inputs["minMasterVersion"] == "1.33"


def test_preflight_reads_the_channel_versions_under_preview() -> None:
    rec = run_main(_real(stack_values("llama31-405b-v6e16")), "llama31-405b-v6e16", preview=True)
    (call,) = [i for i in rec.invokes if i.token == ENGINE_VERSIONS]
    assert call.args["location"] == "us-east5-b" and call.args["project"] == "my-real-project"


def test_preflight_refuses_a_channel_default_older_than_the_generation() -> None:
    values = _real(variant("dev", cluster={"release_channel": "STABLE"}))
    invokes = _invokes(**{ENGINE_VERSIONS: _versions(STABLE="1.30.9-gke.1000000")})
    rec = Recording()
    with pytest.raises(pulumi.RunError) as err:
        run_main(values, "dev", invokes=invokes, recording=rec)
    message = str(err.value)
    assert "1.30.9-gke.1000000" in message and "1.31.2-gke.1115000" in message
    assert "cluster.release_channel" in message or "cluster.min_master_version" in message
    assert rec.resources == []  # refused before anything was registered


def test_preflight_refuses_a_version_the_zone_no_longer_offers() -> None:
    values = _real(variant("dev", cluster={"min_master_version": "1.31.2-gke.1115000"}))
    with pytest.raises(
        pulumi.RunError, match=r"cluster\.min_master_version: 1\.31\.2-gke\.1115000 is not offered"
    ):
        run_main(values, "dev")


def test_preflight_refuses_a_minor_the_zone_does_not_offer() -> None:
    values = _real(variant("dev", cluster={"min_master_version": "1.36"}))
    with pytest.raises(pulumi.RunError, match=r"cluster\.min_master_version: no 1\.36 version"):
        run_main(values, "dev")


# ------------------------------------------------------------------ 2. no planned replacement


# Cluster inputs that describe the (deleted) default pool: the provider reads back what GKE
# reports and plans a replacement when they differ (terraform-provider-google #12070, #17511).
DRIFT_PRONE_CLUSTER_FIELDS = (
    "nodeConfig",
    "nodePools",
    "initialNodeCount",
    "nodeVersion",
    "nodePoolDefaults",
)


@pytest.mark.parametrize("stack", STACKS)
def test_cluster_inputs_carry_no_drift_prone_fields(stack: str) -> None:
    cluster = run_main(stack_values(stack), stack).one(CLUSTER)
    drifting = [
        f for f in DRIFT_PRONE_CLUSTER_FIELDS if f in cluster.inputs and f not in cluster.ignore_changes
    ]
    assert drifting == [], f"set at create only, but not ignored afterwards: {drifting}"
    assert cluster.inputs["removeDefaultNodePool"] is True


def test_scale_from_zero_pools_ignore_their_initial_count() -> None:
    """initialNodeCount forces a new pool; GKE changes it when the pool is resized."""
    rec = run_main(_everything(), "dev")
    pools = {r.name: r for r in rec.by_type(POOL)}
    assert "initialNodeCount" in pools["tpu-pool-1-node-pool"].inputs
    assert "initialNodeCount" in pools["tpu-pool-1-node-pool"].ignore_changes


# ---------------------------------------------------------------- 3. placeholders stay home


def test_placeholder_checkpoint_is_refused_before_any_resource_on_up() -> None:
    values = {**stack_values("llama31-405b-v6e16"), "gcp:project": "my-real-project"}
    rec = Recording()
    with pytest.raises(
        pulumi.RunError, match=r"model\.checkpoint: .*your-checkpoint-bucket.* is a placeholder"
    ):
        run_main(values, "llama31-405b-v6e16", preview=False, recording=rec)
    assert rec.resources == []


def test_placeholders_are_warnings_under_preview() -> None:
    rec = run_main(stack_values("dev"), "dev", preview=True)
    assert rec.resources
    assert any("gcp:project" in w and "placeholder" in w for w in rec.warnings)
    assert any("model.checkpoint" in w for w in rec.warnings)
    assert rec.invokes == []  # pre-flight reads need a real project and checkpoint


def test_real_values_pass_without_warnings() -> None:
    rec = run_main(_real(stack_values("dev")), "dev", preview=False)
    assert rec.resources and rec.warnings == []


# ------------------------------------------------- 4. Workload Identity pool exists before use


def test_workload_identity_binding_waits_for_the_cluster() -> None:
    """The `<project>.svc.id.goog` pool exists once a cluster with Workload Identity exists."""
    rec = run_main(_everything(), "dev")
    binding = rec.one("gcp:serviceaccount/iAMMember:IAMMember")
    assert rec.one(CLUSTER).urn in binding.dependencies


# ------------------------------------------------------------------------------- 5. flex-start


def test_flex_start_needs_gke_1_33() -> None:
    with pytest.raises(ConfigError, match=r"cluster\.min_master_version: flex-start TPUs need GKE >= 1\.33"):
        variant_config("dev", tpu={"capacity": "flex-start"}, cluster={"min_master_version": "1.32"})


def test_flex_start_preflight_checks_the_channel_default() -> None:
    values = _real(variant("dev", tpu={"capacity": "flex-start"}))
    invokes = _invokes(**{ENGINE_VERSIONS: _versions(REGULAR="1.32.9-gke.1108000")})
    with pytest.raises(pulumi.RunError, match=r"flex-start.*1\.33\.0-gke\.1712000"):
        run_main(values, "dev", invokes=invokes)


def test_flex_start_zone_must_offer_it() -> None:
    with pytest.raises(ConfigError, match=r"tpu\.capacity: flex-start .*v6e .*us-south1-a"):
        variant_config("dev", tpu={"capacity": "flex-start"}, cluster={"zone": "us-south1-a"})


def test_flex_start_run_duration_is_at_most_seven_days() -> None:
    with pytest.raises(ConfigError, match=r"tpu\.max_run_duration_hours"):
        variant_config("dev", tpu={"capacity": "flex-start", "max_run_duration_hours": 169})
    c = variant_config("dev", tpu={"capacity": "flex-start", "max_run_duration_hours": 24})
    assert c.tpu.max_run_duration_hours == 24
    assert catalog.FLEX_START_MAX_RUN_HOURS == 168


# ---------------------------------------------------------- 7. values set with `config set --path`


def test_cli_set_numbers_and_booleans_render_as_maxtext_expects() -> None:
    """`pulumi config set --path ...maxtext_extra_args.steps 1` stores an integer, `true` a bool."""
    from components import manifests

    c = variant_config(
        "llama31-405b-v6e16", serving={"maxtext_extra_args": {"steps": 1, "async_checkpointing": False}}
    )
    args = manifests.maxtext_args(c)
    assert "steps=1" in args and "async_checkpointing=false" in args
    env = variant_config("dev", serving={"model_server_env": {"LOG_EVERY": 10, "VERBOSE": True}})
    assert dict(env.serving.model_server_env) == {"LOG_EVERY": 10, "VERBOSE": True}


# ------------------------------------------------------------- 8. Pathways follows the engine


def test_pathways_images_follow_the_engines_jax() -> None:
    jetstream = variant_config("dev")
    app = variant_config(
        "dev",
        serving={"engine": "inference-app", "maxtext_extra_args": None},
        model=app_model("dev"),
        images={"inference_app": "us-docker.pkg.dev/p/r/inference-app:0.1.0"},
    )
    assert jetstream.pathways_server_image.endswith("/server:jax-0.5.3")
    assert app.pathways_server_image.endswith(f"/server:jax-{catalog.INFERENCE_APP_JAX_VERSION}")
    assert app.pathways_proxy_image.endswith(f"/proxy_server:jax-{catalog.INFERENCE_APP_JAX_VERSION}")


def test_a_proxy_for_another_jax_is_refused_with_our_image() -> None:
    with pytest.raises(ConfigError, match=r"images\.pathways_proxy: .*jax-0\.5\.3.*inference-app"):
        variant_config(
            "dev",
            serving={"engine": "inference-app", "maxtext_extra_args": None},
            model=app_model("dev"),
            images={
                "inference_app": "us-docker.pkg.dev/p/r/inference-app:0.1.0",
                "pathways_proxy": catalog.pathways_proxy_image("0.5.3"),
            },
        )


# ------------------------------------------------- 9. nodes boot after their roles propagate


@pytest.mark.parametrize("stack", STACKS)
def test_cluster_and_pools_wait_for_their_service_accounts_roles(stack: str) -> None:
    rec = run_main(stack_values(stack), stack)
    bindings = {r.urn: r.name for r in rec.by_type("gcp:projects/iAMMember:IAMMember")}

    def roles_of(prefix: str) -> set[str]:
        return {urn for urn, name in bindings.items() if name.startswith(prefix)}

    system, tpu = roles_of("gke-system-nodes-"), roles_of("tpu-nodes-")
    assert len(system) == len(tpu) == len(catalog.NODE_SA_PROJECT_ROLES)
    assert system <= set(rec.one(CLUSTER).dependencies)
    for pool in rec.by_type(POOL):
        assert (system if pool.name == "gke-system-pool" else tpu) <= set(pool.dependencies), pool.name
