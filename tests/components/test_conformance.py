"""The two reference stacks render the guide's LeaderWorkerSet + Service, except deliberate differences.

Each difference below is applied to the published YAML (after placeholder substitution) and the
result must equal what we render, field for field. Anything else that differs fails the test.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from components import catalog, manifests
from components.config import StackConfig

from .conftest import REFERENCE_STACKS, load_stack, reference_file

Obj = dict[str, Any]
STAGING_SCRATCH = "gs://cloud-pathways-staging/tmp"


def seed_objects(stack: str, c: StackConfig) -> list[Obj]:
    text = reference_file(REFERENCE_STACKS[stack]).read_text()
    text = (
        text.replace("TPU_ACCELERATOR_TYPE", c.generation.node_label)
        .replace("TPU_TOPOLOGY", c.tpu.topology)
        .replace("GCS_CHECKPOINT_PATH", c.model.checkpoint)
    )
    return [d for d in yaml.safe_load_all(text) if d]


def _pod_specs(lws: Obj) -> list[Obj]:
    t = lws["spec"]["leaderWorkerTemplate"]
    return [t["leaderTemplate"]["spec"], t["workerTemplate"]["spec"]]


# ------------------------------------------------------------------- the deliberate differences


def add_namespace_and_labels(obj: Obj, c: StackConfig) -> None:
    """1. Objects carry an explicit namespace and the app.kubernetes.io labels (ownership, policy)."""
    obj["metadata"]["namespace"] = c.serving.namespace
    obj["metadata"]["labels"] = manifests.labels(c, "model-server")


def add_pulumi_await(lws: Obj, c: StackConfig) -> None:
    """2. `pulumi up` waits for the LWS Available condition, for longer than the checkpoint restore."""
    lws["metadata"]["annotations"]["pulumi.com/waitFor"] = "condition=Available"
    lws["metadata"]["annotations"]["pulumi.com/timeoutSeconds"] = str(c.serving.ready_timeout_seconds)


def pin_images(lws: Obj, c: StackConfig) -> None:
    """3. The guide's `:latest` Pathways images are pinned (the tutorial's jax-0.5.3 pairing)."""
    pinned = {
        "us-docker.pkg.dev/cloud-tpu-v2-images/pathways/server:latest": c.pathways_server_image,
        "us-docker.pkg.dev/cloud-tpu-v2-images/pathways/proxy_server:latest": c.pathways_proxy_image,
    }
    for spec in _pod_specs(lws):
        for container in spec["containers"]:
            container["image"] = pinned.get(container["image"], container["image"])


def own_scratch_bucket(lws: Obj, c: StackConfig) -> None:
    """4. Pathways scratch goes to the stack's private bucket, not Google's shared staging bucket."""
    for spec in _pod_specs(lws):
        for container in spec["containers"]:
            if "args" in container:
                container["args"] = [
                    a.replace(STAGING_SCRATCH, c.scratch_location)
                    if a.startswith("--gcs_scratch_location=")
                    else a
                    for a in container["args"]
                ]


def tolerate_tpu_taint_on_workers(lws: Obj, c: StackConfig) -> None:
    """5. The 70B seed's workers lack the TPU toleration its leader has; our TPU pools carry the taint."""
    worker = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]
    worker.setdefault(
        "tolerations", [{"key": catalog.TPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]
    )


DIFFERENCES = (
    add_namespace_and_labels,
    add_pulumi_await,
    pin_images,
    own_scratch_bucket,
    tolerate_tpu_taint_on_workers,
)


def normalise_maxtext_args(lws: Obj) -> None:
    """6. MaxText flags compare as a key -> value mapping (its pyconfig ignores order) with booleans
    case-folded ("True" == "true"); the first argument (the config file) stays positional."""
    for container in lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"]:
        if container["name"] != "jax-tpu":
            continue
        first, *flags = container["args"]
        pairs = [f.split("=", 1) for f in flags]
        container["args"] = [first, {k: v.lower() if v.lower() in ("true", "false") else v for k, v in pairs}]
        assert len(container["args"][1]) == len(pairs), "a MaxText flag is repeated"


def expected_objects(stack: str, c: StackConfig) -> list[Obj]:
    lws, svc = seed_objects(stack, c)
    for diff in DIFFERENCES:
        if diff is add_namespace_and_labels:
            diff(lws, c)
            diff(svc, c)
        else:
            diff(lws, c)
    normalise_maxtext_args(lws)
    return [lws, svc]


@pytest.mark.parametrize("stack", sorted(REFERENCE_STACKS))
def test_reference_stack_matches_the_guide(stack: str) -> None:
    c = load_stack(stack)
    lws, svc = manifests.leader_worker_set(c), manifests.service(c)
    rendered_lws = copy.deepcopy(lws)
    normalise_maxtext_args(rendered_lws)
    want_lws, want_svc = expected_objects(stack, c)
    assert svc == want_svc
    assert rendered_lws == want_lws


@pytest.mark.parametrize("stack", sorted(REFERENCE_STACKS))
def test_every_deliberate_difference_is_needed(stack: str) -> None:
    """Dropping any one listed difference (except the 405B's absent toleration gap) breaks equality."""
    c = load_stack(stack)
    rendered = copy.deepcopy(manifests.leader_worker_set(c))
    normalise_maxtext_args(rendered)
    for skipped in DIFFERENCES:
        lws, _ = seed_objects(stack, c)
        for diff in DIFFERENCES:
            if diff is not skipped:
                diff(lws, c)
        normalise_maxtext_args(lws)
        if skipped is tolerate_tpu_taint_on_workers and stack == "llama31-405b-v6e16":
            assert lws == rendered  # the 405B seed already tolerates the taint on workers
        else:
            assert lws != rendered, f"{skipped.__name__} is listed but changes nothing for {stack}"


def test_jax_tpu_args_are_exactly_the_published_flags_in_the_405b_order() -> None:
    """Beyond the mapping comparison: the 405B flags are literally the published ones, same order."""
    c = load_stack("llama31-405b-v6e16")
    (seed_lws, _) = seed_objects("llama31-405b-v6e16", c)
    seed_args = next(
        x
        for x in seed_lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"]
        if x["name"] == "jax-tpu"
    )["args"]
    assert sorted(manifests.maxtext_args(c)) == sorted(seed_args)
