"""`python -m components.render stacks/Pulumi.<stack>.yaml`: print the stack's Kubernetes objects.

Offline and Pulumi-free: the same pure functions `pulumi up` applies. Exit 2 on invalid config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from components import catalog, manifests
from components.config import StackConfig
from components.stack_file import load_for_command


def to_yaml(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False, width=1000)


def render(c: StackConfig) -> str:
    header = (
        f"# Stack {c.stack}: {c.model.name} on {c.slice_count} x TPU {c.tpu.generation} {c.tpu.topology} "
        f"({c.serving.mode}, engine {c.serving.engine}).\n"
    )
    if c.lws.install:
        url = catalog.lws_manifest_url(c.lws.version)
        header += f"# Applied first (server-side): the LWS controller from {url}\n"
    return header + to_yaml(manifests.workload_objects(c))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.render", description=__doc__)
    parser.add_argument("stack_file", type=Path, help="stacks/Pulumi.<stack>.yaml")
    args = parser.parse_args(argv)
    c = load_for_command(args.stack_file)
    if c is None:
        return 2
    sys.stdout.write(render(c))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
