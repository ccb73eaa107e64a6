"""Check registered resource inputs against the installed provider SDKs' input types, key by key.

Mocks echo whatever they are given, and the Python SDK passes a dict key it does not know through
untranslated (`workload_metadata_confg` stays snake_case on the wire), so a typo in a nested dict
only fails in the cloud. Each `pulumi_gcp.*._inputs` / `pulumi_kubernetes` Args class names its
properties with `@pulumi.getter(name="camelCase")` and types them; this module walks a recorded
resource's inputs (the wire form) along those types and reports every key no type declares.
"""

from __future__ import annotations

import collections.abc
import importlib
import sys
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any

import pulumi
from pulumi.runtime import rpc

_PULUMI_NAME = "_pulumi_name"  # the attribute @pulumi.getter(name=...) sets on a getter


@dataclass(frozen=True)
class Obj:
    cls: type  # an input type (Args class): only its getters' names are valid keys


@dataclass(frozen=True)
class Seq:
    item: Spec


@dataclass(frozen=True)
class Map:
    value: Spec  # free-form keys (labels, annotations, ...)


@dataclass(frozen=True)
class Leaf:
    pass


Spec = Obj | Seq | Map | Leaf


def args_class(token: str) -> type | None:
    """The SDK's Args class of a resource type token, or None for types without one (CRDs)."""
    if token == "pulumi:providers:kubernetes":
        return importlib.import_module("pulumi_kubernetes").ProviderArgs  # type: ignore[no-any-return]
    package, module_path, name = token.split(":")
    if package == "gcp":
        module = importlib.import_module(f"pulumi_gcp.{module_path.split('/')[0]}")
        return getattr(module, f"{name}Args")  # type: ignore[no-any-return]
    if package == "kubernetes":
        try:
            module = importlib.import_module("pulumi_kubernetes." + module_path.replace("/", "."))
        except ModuleNotFoundError:
            return None  # a custom resource (apiVersion with a dot): checked against its CRD schema
        for candidate in (f"{name}InitArgs", f"{name}Args"):
            cls = getattr(module, candidate, None)
            if cls is not None:
                return cls  # type: ignore[no-any-return]
    raise AssertionError(f"no SDK Args class known for {token}")


@cache
def properties(cls: type) -> dict[str, Spec]:
    """Wire name -> spec of every property an input type declares."""
    globalns: dict[str, Any] = {}
    for base in reversed(cls.__mro__):
        globalns.update(vars(sys.modules[base.__module__]))
    localns = {"Output": pulumi.Output, "T": type(None)}
    out: dict[str, Spec] = {}
    for base in cls.__mro__:
        for attr in vars(base).values():
            fget = getattr(attr, "fget", None)
            if fget is None or not hasattr(fget, _PULUMI_NAME):
                continue
            hint = typing.get_type_hints(fget, globalns=globalns, localns=localns).get("return", Any)
            out.setdefault(getattr(fget, _PULUMI_NAME), spec_of(hint))
    return out


def properties_if_any(tp: type) -> bool:
    """Whether `tp` is an SDK input type (its getters carry wire names)."""
    return any(hasattr(getattr(a, "fget", None), _PULUMI_NAME) for a in vars(tp).values())


def spec_of(hint: Any) -> Spec:
    """What a property's type allows, with Input/Output/Optional/Awaitable unwrapped."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        specs = [spec_of(arg) for arg in typing.get_args(hint) if arg is not type(None)]
        for kind in (Obj, Seq, Map):  # an Args class wins over the dict form it also accepts
            found = [s for s in specs if isinstance(s, kind)]
            if found:
                return found[0]
        return Leaf()
    if origin in (collections.abc.Awaitable,) or origin is pulumi.Output:
        return spec_of(typing.get_args(hint)[0])
    if origin in (list, collections.abc.Sequence):
        args = typing.get_args(hint)
        return Seq(spec_of(args[0]) if args else Leaf())
    if origin in (dict, collections.abc.Mapping):
        args = typing.get_args(hint)
        return Map(spec_of(args[1]) if len(args) == 2 else Leaf())
    if isinstance(hint, type) and typing.is_typeddict(hint):
        return Leaf()  # the `...ArgsDict` alternative; the Args class in the same Union is used
    if isinstance(hint, type) and properties_if_any(hint):
        return Obj(hint)
    return Leaf()


def _unwrap_secret(value: Any) -> Any:
    if isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig:
        return value.get("value")
    return value


def unknown_keys(value: Any, spec: Spec, path: str = "") -> list[str]:
    """Every key under `value` that `spec` does not declare, as dotted paths."""
    value = _unwrap_secret(value)
    out: list[str] = []
    if isinstance(spec, Obj) and isinstance(value, dict):
        declared = properties(spec.cls)
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if key not in declared:
                out.append(f"{where}: unknown to {spec.cls.__name__}")
            else:
                out += unknown_keys(item, declared[key], where)
    elif isinstance(spec, Seq) and isinstance(value, list):
        for i, item in enumerate(value):
            out += unknown_keys(item, spec.item, f"{path}[{i}]")
    elif isinstance(spec, Map) and isinstance(value, dict):
        for key, item in value.items():
            out += unknown_keys(item, spec.value, f"{path}.{key}")
    return out
