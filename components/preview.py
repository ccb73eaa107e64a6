"""`python -m components.preview --stack <name>`: an offline plan of a stack.

Runs the real `__main__.py` under recording mocks (components.mocks) with the stack file's config
and prints the resource tree (type, name, provider, dependencies), the warnings (placeholders),
the stack outputs and the rendered Kubernetes manifests. Pre-flight reads are answered by the
mocks' healthy-project invokes. It is NOT a cloud diff: nothing is read from GCP or a cluster; use
`pulumi preview` for that.
"""

from __future__ import annotations

import argparse
import runpy
from pathlib import Path

import yaml

from components.mocks import Recording, ResourceRecord, run_program
from components.render import render
from components.stack_file import load_for_command, read_stack_file

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_stack(stack: str, stacks_dir: Path = REPO_ROOT / "stacks") -> Recording:
    """Run `__main__.py` for `stacks/Pulumi.<stack>.yaml` under mocks."""
    values = read_stack_file(stacks_dir / f"Pulumi.{stack}.yaml")
    main = str(REPO_ROOT / "__main__.py")
    return run_program(values, stack, lambda: runpy.run_path(main, run_name="__main__"))


def _short(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def tree(rec: Recording) -> str:
    """The resource tree, children under parents, siblings sorted by name (deterministic)."""
    children: dict[str, list[ResourceRecord]] = {}
    for r in rec.resources:
        children.setdefault(r.parent, []).append(r)
    urns = {r.urn for r in rec.resources}
    roots = [r for r in rec.resources if r.parent not in urns]
    lines: list[str] = []

    def walk(r: ResourceRecord, depth: int) -> None:
        extra = []
        if r.provider:
            extra.append(f"provider={_short(r.provider.rsplit('::', 1)[0])}")  # provider ref is '<urn>::<id>'
        if r.dependencies:
            extra.append("after=" + ",".join(sorted(_short(d) for d in r.dependencies)))
        suffix = f"  [{'; '.join(extra)}]" if extra else ""
        lines.append(f"{'  ' * depth}{'+' if r.custom else '*'} {r.type} {r.name}{suffix}")
        for child in sorted(children.get(r.urn, []), key=lambda x: (x.type, x.name)):
            walk(child, depth + 1)

    for r in sorted(roots, key=lambda x: (x.type, x.name)):
        walk(r, 0)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.preview", description=__doc__)
    parser.add_argument("--stack", required=True, help="stack name: stacks/Pulumi.<stack>.yaml")
    args = parser.parse_args(argv)
    path = REPO_ROOT / "stacks" / f"Pulumi.{args.stack}.yaml"
    config = load_for_command(path)
    if config is None:
        return 2
    rec = run_stack(args.stack)
    print(f"# Offline plan of stack {args.stack!r} (recording mocks; not a cloud diff)")
    print(f"# {len(rec.resources)} resources  (* component, + resource)\n")
    print(tree(rec))
    if rec.warnings:
        print("\n# Warnings (what `pulumi preview` would print)")
        print("\n".join(f"warning: {w}" for w in rec.warnings))
    print("\n# Stack outputs")
    print(yaml.safe_dump(rec.outputs, sort_keys=True, width=1000), end="")
    print("\n# Kubernetes manifests")
    print(render(config), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
