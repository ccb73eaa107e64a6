"""Suite-wide hooks: one persistent XLA compilation cache for the run, and how `make test` spreads
the suite over pytest-xdist workers (docs/testing.md has the measurements behind both).

- Cache: every test that builds an engine compiles the same 30-layer step programs again (a new
  JaxEngine jits new closures); with the cache on from the start, the second engine with a shape
  loads it instead of compiling, in this process, in the other worker and in every server or
  checker subprocess (they inherit the variables). It is the serving app's own default cache
  directory (EngineSettings.compilation_cache_dir) under the repository, so a second local run
  starts warm; CI's fresh clone starts cold. What a test checks about compiling (the jit caches'
  `_cache_size()`) is the in-memory trace cache, which this does not change.
- Workers: with `--dist loadgroup`, one group per test file, so a module-scoped fixture (an engine,
  a server) is built once; files that share one real-model server (SMOLLM2_SERVER_FILES) form one
  group. Groups whose files are known to be long start first, so the two workers finish together.
  The groups are given to xdist as its scheduler's scopes (pytest_xdist_make_scheduler): its own
  `xdist_group` marks rename node ids, which pytest 9 no longer lets a plugin do, so they group
  nothing here (each test then went to either worker).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.mocks import ensure_event_loop
from inference_app.engine.settings import EngineSettings

REPO = Path(__file__).resolve().parents[1]

# The files that use tests/inference_app/conftest.py's session-scoped `smollm2_server`.
SMOLLM2_SERVER_GROUP = "smollm2-server"
SMOLLM2_SERVER_FILES = ("tests/inference_app/clients/", "tests/inference_app/server/test_process.py")

# The longest groups of a cold run (docs/testing.md), started first; the rest keep file order.
LONG_FIRST = (
    SMOLLM2_SERVER_GROUP,
    "tests/inference_app/model/test_quant_model.py",
    "tests/inference_app/engine/test_engine.py",
    "tests/inference_app/engine/test_chunked_prefill.py",
    "tests/inference_app/model/test_cpu_kernels.py",
    "tests/inference_app/engine/test_sharding.py",
)


def pytest_configure(config: pytest.Config) -> None:
    cache = EngineSettings().compilation_cache_dir
    if cache and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        # The variables for subprocesses (servers, checkers), which inherit them ...
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(REPO / cache)
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        # ... and jax.config for this process: jax is imported by now (this module's imports), and
        # reads the variables only at import, so without this the engines built in the test
        # processes themselves compiled every program afresh (seen: "cache is disabled").
        from inference_app.engine.engine import enable_compilation_cache

        enable_compilation_cache(os.environ["JAX_COMPILATION_CACHE_DIR"])


@pytest.fixture(autouse=True)
def main_thread_event_loop() -> Iterator[None]:
    """Pulumi's mocks (components/, policy/) run on the main thread's current event loop, and a test
    that ran `asyncio.run` before them in the same worker (the openai SDK's async client, Orbax)
    leaves the thread with none: "There is no current event loop". Serially the stack tests ran
    first; with workers and longest-first groups they need not, so each test starts with a loop
    (`run_program` makes sure of it too, for module-scoped stack fixtures set up before this)."""
    ensure_event_loop()
    yield


def group_of(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    if path.startswith(SMOLLM2_SERVER_FILES):
        return SMOLLM2_SERVER_GROUP
    return path


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup":
        return None  # xdist's own scheduler for the other modes

    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        """xdist's scope scheduler (a worker takes a whole scope), with group_of as the scope."""

        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return ByGroup(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups: dict[str, list[pytest.Item]] = {}
    for item in items:
        groups.setdefault(group_of(item.nodeid), []).append(item)
    rank = {g: i for i, g in enumerate(LONG_FIRST)}
    order = sorted(groups, key=lambda g: rank.get(g, len(rank)))  # stable: file order otherwise
    items[:] = [item for group in order for item in groups[group]]
