"""Pathways (multi-slice TPU through one controller): environment checks and initialisation.

In the cluster, the leader pod's model container talks to the Pathways proxy: JAX is told to use
the `proxy` platform (`JAX_PLATFORMS=proxy`) at `JAX_BACKEND_TARGET=grpc://<host>:<port>`, and
`pathwaysutils.initialize()` must run before JAX is first used. `check_environment` is pure (it
is what the tests exercise here); `initialize` also imports the package.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping

log = logging.getLogger("inference_app.pathways")


class PathwaysConfigError(RuntimeError):
    """The flags and the environment disagree about Pathways; the message says how to fix it."""


def check_environment(enabled: bool, environ: Mapping[str, str] | None = None) -> None:
    """Raise `PathwaysConfigError` when `--pathways` and JAX_PLATFORMS/JAX_BACKEND_TARGET disagree."""
    env = os.environ if environ is None else environ
    platforms = env.get("JAX_PLATFORMS", "")
    target = env.get("JAX_BACKEND_TARGET", "")
    if not enabled:
        if platforms == "proxy":
            raise PathwaysConfigError(
                "JAX_PLATFORMS=proxy is set but --pathways is not: add --pathways (the proxy backend "
                "needs pathwaysutils.initialize()) or unset JAX_PLATFORMS."
            )
        return
    if platforms != "proxy":
        raise PathwaysConfigError(
            f"--pathways needs JAX_PLATFORMS=proxy (got {platforms!r}); set it in the container env."
        )
    if not target.startswith("grpc://"):
        raise PathwaysConfigError(
            f"--pathways needs JAX_BACKEND_TARGET=grpc://<proxy host>:<port> (got {target!r}), "
            "e.g. grpc://localhost:38681 for the proxy sidecar."
        )


def initialize(enabled: bool, environ: Mapping[str, str] | None = None) -> bool:
    """Check the environment and, with `--pathways`, run `pathwaysutils.initialize()`.

    Must be called before anything touches JAX. Returns whether Pathways was initialised.
    """
    check_environment(enabled, environ)
    if not enabled:
        return False
    try:
        pathwaysutils = importlib.import_module("pathwaysutils")
    except ImportError as exc:
        raise PathwaysConfigError(
            "--pathways needs the pathwaysutils package, which is not installed: "
            "pip install pathwaysutils (the inference-app container image includes it)."
        ) from exc
    pathwaysutils.initialize()
    env = os.environ if environ is None else environ
    log.info("Pathways initialised (proxy at %s).", env.get("JAX_BACKEND_TARGET"))
    return True
