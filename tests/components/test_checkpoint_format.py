"""Pre-flight's checkpoint format (components/checkpoint_format.py, preflight.py) against what the
tools write and what the server detects on the same files.

The listings below are the object names Orbax writes for MaxText (checked against real saves in
`test_the_listing_agrees_with_the_server_on_what_orbax_writes`), a Hugging Face directory and a
GGUF file; the pre-flight tests run the real `__main__.py` with the bucket listing answered by them.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pulumi
import pytest

from components.checkpoint_format import Listing, classify, has_tokenizer

from .conftest import stack_values, variant
from .test_first_up import _real
from .test_program import IMG, run_main

CKPT = "gs://my-models/llama/ckpt"  # what _real puts in model.checkpoint
TOKENIZER = "gs://my-models/llama/hf"
LIST = "gcp:storage/getBucketObjects:getBucketObjects"

ORBAX = ("_CHECKPOINT_METADATA", "_METADATA", "commit_success.txt")
OCDBT = (*ORBAX, "manifest.ocdbt", "ocdbt.process_0/manifest.ocdbt", "d/f74ec866506e22cf")
PER_ARRAY = (
    *ORBAX,
    "params.params.decoder.decoder_norm.scale/.zarray",
    "params.params.decoder.decoder_norm.scale/0",
)
HF = ("config.json", "tokenizer.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json")


def _under(path: str, names: tuple[str, ...]) -> list[str]:
    return [f"{path}/{n}" for n in names]


# ----------------------------------------------------------------------------------- the listing


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (_under(CKPT, OCDBT), Listing("maxtext", ocdbt=True)),
        (_under(CKPT, PER_ARRAY), Listing("maxtext", ocdbt=False)),
        (_under(CKPT, HF), Listing("huggingface")),
        # A MaxText run directory: the checkpoint is a step's `items` below it.
        (_under(CKPT + "/0/items", PER_ARRAY), Listing(None, deeper="0/items")),
        (_under(CKPT, ("llama-q8_0.gguf",)), Listing(None, deeper="llama-q8_0.gguf")),
        # Objects that merely share the prefix (`ckpt-old/`) are not under the path.
        (_under(CKPT + "-old", PER_ARRAY), Listing(None)),
        (_under(CKPT, ("config.json", "README.md")), Listing(None)),  # HF without weights
    ],
)
def test_the_listing_names_the_format(names: list[str], expected: Listing) -> None:
    assert classify(CKPT, names) == expected


def test_a_gguf_path_is_the_file() -> None:
    assert classify(CKPT + ".gguf", [CKPT + ".gguf"]) == Listing("gguf")


def test_the_tokenizer_is_a_directory_with_tokenizer_json_or_the_file() -> None:
    names = _under(TOKENIZER, HF)
    assert has_tokenizer(TOKENIZER, names) and has_tokenizer(TOKENIZER + "/", names)
    assert has_tokenizer(TOKENIZER + "/tokenizer.json", names)
    assert not has_tokenizer(TOKENIZER, _under(TOKENIZER, ("config.json",)))
    assert not has_tokenizer(TOKENIZER, _under(TOKENIZER + "/sub", ("tokenizer.json",)))


def _save_orbax(directory: Path, *, ocdbt: bool) -> Path:
    """An Orbax PyTree save as MaxText makes it (OCDBT its default; `checkpoint_storage_use_ocdbt=false`
    writes one directory per array). In a thread: Orbax's `asyncio.run` would leave this thread
    without the event loop the Pulumi mocks of later tests need."""
    import orbax.checkpoint as ocp

    item = {"params": {"params": {"decoder": {"decoder_norm": {"scale": np.ones(4, np.float32)}}}}}
    save = ocp.PyTreeCheckpointer(use_ocdbt=ocdbt).save
    with ThreadPoolExecutor(1) as pool:
        pool.submit(save, str(directory.resolve()), item, force=True).result()
    return directory


def _files(root: Path) -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]


@pytest.mark.parametrize("ocdbt", [True, False])
def test_the_listing_agrees_with_the_server_on_what_orbax_writes(tmp_path: Path, ocdbt: bool) -> None:
    """Pre-flight reads a listing; the server looks at the files: the same checkpoint, one answer."""
    from inference_app.model import maxtext
    from inference_app.model.loader import checkpoint_format

    run = tmp_path / "run"
    items = _save_orbax(run / "0" / "items", ocdbt=ocdbt)
    found = classify(str(items), _files(tmp_path))
    assert found == Listing("maxtext", ocdbt=ocdbt)
    assert checkpoint_format(str(items)) == "maxtext" and maxtext.uses_ocdbt(str(items)) == ocdbt
    assert classify(str(run), _files(tmp_path)).deeper == "0/items"
    assert checkpoint_format(str(run)) != "maxtext"  # the server does not look deeper either


def test_the_listing_agrees_with_the_server_on_hugging_face_and_gguf(tmp_path: Path) -> None:
    from inference_app.model.loader import checkpoint_format

    hf = tmp_path / "hf"
    hf.mkdir()
    for name in HF:
        (hf / name).write_text("{}")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    listed = _files(tmp_path)
    assert (classify(str(hf), listed).format, checkpoint_format(str(hf))) == ("huggingface", "hf")
    assert (classify(str(gguf), listed).format, checkpoint_format(str(gguf))) == ("gguf", "gguf")


# -------------------------------------------------------------------------------------- pre-flight


def _listing(checkpoint: tuple[str, ...], tokenizer: tuple[str, ...] = HF) -> Any:
    """getBucketObjects answering the checkpoint's and the tokenizer's prefixes."""
    trees = {"llama/ckpt": checkpoint, "llama/hf": tokenizer}

    def answer(args: dict[str, Any]) -> dict[str, Any]:
        prefix = str(args["prefix"]).rstrip("/")
        names = [f"{prefix}/{n}" for n in trees.get(prefix, ())]
        return {"bucket": args["bucket"], "bucketObjects": [{"name": n} for n in names]}

    return {LIST: answer}


def _app(**model: Any) -> dict[str, Any]:
    values = variant(
        "dev",
        serving={"engine": "inference-app", "maxtext_extra_args": None},
        images={"inference_app": IMG},
        model={"tokenizer_path": None, **model},
    )
    return _real(values, CKPT)


@pytest.mark.parametrize(
    ("values", "listing", "says"),
    [
        (_real(stack_values("dev"), CKPT), PER_ARRAY, "is a MaxText (Orbax) checkpoint"),
        (_app(), HF, "is a Hugging Face directory (config.json + *.safetensors)"),
        (_app(hf_tokenizer_path=TOKENIZER), PER_ARRAY, "is a MaxText (Orbax) checkpoint"),
    ],
)
def test_preflight_says_which_format_it_found(
    values: dict[str, Any], listing: tuple[str, ...], says: str
) -> None:
    rec = run_main(values, "dev", invokes=_listing(listing))
    assert any(m == f"model.checkpoint: {CKPT} {says}" for m in rec.infos), rec.infos


def test_an_ocdbt_checkpoint_may_go_through_the_leader_when_persistence_is_off() -> None:
    values = _app(hf_tokenizer_path=TOKENIZER)
    serving = {
        **values["tpu-pathways-inference:serving"],
        "model_server_env": {"ENABLE_PATHWAYS_PERSISTENCE": 0},
    }
    rec = run_main({**values, "tpu-pathways-inference:serving": serving}, "dev", invokes=_listing(OCDBT))
    assert f"model.checkpoint: {CKPT} is a MaxText (Orbax) checkpoint saved with OCDBT" in rec.infos


@pytest.mark.parametrize(
    ("values", "listing", "tokenizer", "expected"),
    [
        (
            _real(stack_values("dev"), CKPT),
            HF,
            HF,
            "is a Hugging Face directory (config.json + *.safetensors); serving.engine jetstream-maxtext "
            "reads only MaxText checkpoints",
        ),
        (
            _app(hf_tokenizer_path=TOKENIZER),
            OCDBT,
            HF,
            "was saved with OCDBT (manifest.ocdbt); inference-app restores MaxText checkpoints with "
            "ENABLE_PATHWAYS_PERSISTENCE=1",
        ),
        (_app(), PER_ARRAY, HF, "model.hf_tokenizer_path: required: gs://my-models/llama/ckpt is a MaxText"),
        (
            _app(hf_tokenizer_path=TOKENIZER),
            PER_ARRAY,
            ("config.json",),
            "no tokenizer.json at gs://my-models",
        ),
        (_app(hf_tokenizer_path=TOKENIZER), HF, HF, "which carries its own tokenizer; remove it"),
        (
            _real(stack_values("dev"), CKPT),
            ("0/items/_METADATA", "0/items/_CHECKPOINT_METADATA"),
            HF,
            f"there is one at {CKPT}/0/items: point model.checkpoint there",
        ),
    ],
)
def test_preflight_refuses_a_checkpoint_the_engine_cannot_serve(
    values: dict[str, Any], listing: tuple[str, ...], tokenizer: tuple[str, ...], expected: str
) -> None:
    with pytest.raises(pulumi.RunError) as err:
        run_main(values, "dev", invokes=_listing(listing, tokenizer))
    assert expected in str(err.value)


@pytest.mark.parametrize("bucket", ["my-models", "my-tokenizers"])
def test_the_nodes_may_read_the_tokenizer_in_another_bucket(bucket: str) -> None:
    rec = run_main(_app(hf_tokenizer_path=f"gs://{bucket}/llama/hf"), "dev", invokes=_listing(PER_ARRAY))
    readers = {
        r.name: r.inputs["bucket"]
        for r in rec.by_type("gcp:storage/bucketIAMMember:BucketIAMMember")
        if r.inputs["role"] == "roles/storage.objectViewer"
    }
    expected = {"storage-checkpoint-reader": "my-models"}
    if bucket != "my-models":
        expected["storage-tokenizer-reader"] = bucket
    assert readers == expected
