"""The catalog's facts: shapes, VMs, ports and pinned images are internally consistent."""

from __future__ import annotations

import pytest

from components import catalog
from components.config_rules import image_problem


def test_v6e_facts_from_the_issue() -> None:
    v6e = catalog.TPU_GENERATIONS["v6e"]
    assert v6e.node_label == "tpu-v6e-slice"
    assert v6e.pathways_instance_prefix == "tpuv6e"
    assert v6e.chips("4x4") == 16
    assert dict(v6e.topologies["4x4"]) == {"ct6e-standard-4t": 4}
    assert dict(v6e.topologies["2x4"]) == {"ct6e-standard-8t": 1, "ct6e-standard-4t": 2}
    assert v6e.min_gke_version == "1.31.2-gke.1115000"
    assert catalog.TPU_GENERATIONS["v5e"].node_label == "tpu-v5-lite-podslice"
    assert catalog.TPU_GENERATIONS["v5p"].node_label == "tpu-v5p-slice"


@pytest.mark.parametrize("generation", sorted(catalog.TPU_GENERATIONS))
def test_every_shape_is_vms_times_chips_per_vm(generation: str) -> None:
    gen = catalog.TPU_GENERATIONS[generation]
    for topology, machines in gen.topologies.items():
        for machine, vms in machines.items():
            mt = gen.machine_type(machine)
            assert mt is not None, f"{generation} {topology}: unknown machine type {machine}"
            assert vms * mt.chips_per_vm == gen.chips(topology), (generation, topology, machine)
    assert gen.zones and all(gen.region_of(z) + "-" + z[-1] == z for z in gen.zones)


def test_models_carry_architecture_facts() -> None:
    smol = catalog.MODELS["smollm2-135m"]
    assert (smol.layers, smol.q_heads, smol.kv_heads, smol.head_dim, smol.hidden, smol.vocab) == (
        30,
        9,
        3,
        64,
        576,
        49152,
    )
    assert smol.tied_embeddings and smol.maxtext_name is None
    assert 130e6 < smol.params < 140e6
    for name in (
        "llama2-7b",
        "llama2-13b",
        "llama2-70b",
        "llama3-8b",
        "llama3-70b",
        "llama3.1-8b",
        "llama3.1-70b",
        "llama3.1-405b",
    ):
        assert catalog.MODELS[name].maxtext_name == name
    # Llama 2 70B: 80 layers x 8 KV heads x 128 dims x K,V -> 160 KiB per token at int8.
    assert catalog.MODELS["llama2-70b"].kv_bytes_per_token(1) == 80 * 8 * 128 * 2


def test_ports_match_the_reference() -> None:
    assert (
        catalog.HTTP_PORT,
        catalog.JETSTREAM_PORT,
        catalog.RESOURCE_MANAGER_PORT,
        catalog.WORKER_PORT,
        catalog.PROXY_PORT,
    ) == (
        8000,
        9000,
        38677,
        38679,
        38681,
    )


@pytest.mark.parametrize(
    "image",
    [
        *(catalog.pathways_server_image(v) for v in catalog.ENGINE_JAX_VERSIONS.values()),
        *(catalog.pathways_proxy_image(v) for v in catalog.ENGINE_JAX_VERSIONS.values()),
        catalog.JETSTREAM_MAXTEXT_IMAGE,
        catalog.JETSTREAM_HTTP_IMAGE,
    ],
)
def test_default_images_are_pinned(image: str) -> None:
    assert image_problem(image) is None
    assert not image.endswith(":latest")


def test_image_rules() -> None:
    assert image_problem("us-docker.pkg.dev/p/r/img:latest") is not None
    assert image_problem("us-docker.pkg.dev/p/r/img") is not None
    assert image_problem("us-docker.pkg.dev/p/r/img@sha256:" + "a" * 64) is None


def test_lws_manifest_url_is_built_from_the_version() -> None:
    assert (
        catalog.lws_manifest_url("v0.4.0")
        == "https://github.com/kubernetes-sigs/lws/releases/download/v0.4.0/manifests.yaml"
    )
