"""Shared fixtures: stack configs, the reference folder (../shared/reference) and the LWS CRD schemas."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from components.config import StackConfig, parse_stack_config
from components.stack_file import load_stack_file, read_stack_file

REPO_ROOT = Path(__file__).resolve().parents[2]
STACKS_DIR = REPO_ROOT / "stacks"
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference"
STACKS = ("llama31-405b-v6e16", "llama2-70b-disagg", "dev")
REFERENCE_STACKS = {
    "llama31-405b-v6e16": "seed-405b-interleaved.yaml",
    "llama2-70b-disagg": "seed-70b-disaggregated.yaml",
}
LWS_CRD_VERSIONS = ("v0.4.0", "v0.10.0")


def reference_file(name: str) -> Path:
    """A file of ../shared/reference (beside the clone in CI); a clear failure when it is missing."""
    path = REFERENCE_DIR / name
    if not path.is_file():
        pytest.fail(
            f"reference file {path} is missing: these tests need the shared reference folder checked out "
            "beside the repository (../shared/reference from the repo root)"
        )
    return path


def stack_values(stack: str) -> dict[str, Any]:
    return read_stack_file(STACKS_DIR / f"Pulumi.{stack}.yaml")


def load_stack(stack: str) -> StackConfig:
    return load_stack_file(STACKS_DIR / f"Pulumi.{stack}.yaml")


def variant(stack: str, **sections: dict[str, Any]) -> dict[str, Any]:
    """A stack's raw config with some section keys replaced/added (shallow merge per section)."""
    values = copy.deepcopy(stack_values(stack))
    for section, changes in sections.items():
        key = f"tpu-pathways-inference:{section}"
        merged = dict(values.get(key, {}))
        for k, v in changes.items():
            if v is None:
                merged.pop(k, None)
            else:
                merged[k] = v
        values[key] = merged
    return values


def variant_config(stack: str, **sections: dict[str, Any]) -> StackConfig:
    return parse_stack_config(variant(stack, **sections), stack=stack)


def app_model(stack: str, **changes: Any) -> dict[str, Any]:
    """`model` changes that serve a stack's MaxText checkpoint with inference-app: MaxText's tokenizer
    flag out, the Hugging Face tokenizer (a placeholder beside the checkpoint) in."""
    checkpoint = stack_values(stack)["tpu-pathways-inference:model"]["checkpoint"]
    return {
        "tokenizer_path": None,
        "hf_tokenizer_path": checkpoint.rsplit("/", 1)[0] + "/hf-tokenizer",
        **changes,
    }


def _strict(schema: Any) -> Any:
    """Reject unknown fields: additionalProperties false wherever properties are listed."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def lws_schema(version: str) -> dict[str, Any]:
    """The strict openAPIV3Schema of LeaderWorkerSet v1 from the official CRD of `version`."""
    path = reference_file(f"lws/leaderworkersets-crd-{version}.yaml")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    docs = [d for d in yaml.load_all(path.read_text(), Loader=loader) if d]
    crd = next(d for d in docs if d.get("kind") == "CustomResourceDefinition")
    v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema: dict[str, Any] = _strict(v1["schema"]["openAPIV3Schema"])
    # metadata is validated by the API server itself (the CRD only says `type: object`).
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


@cache
def lws_validator(version: str) -> jsonschema.Draft4Validator:
    """A compiled validator (the schema is large; checking it once keeps the tests fast)."""
    schema = lws_schema(version)
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)
