"""Entry point the Pulumi CLI runs for `pulumi preview --policy-pack policy`.

The CLI starts this file as a script inside the pack directory, so the repository root (which
holds the `policy` package) is not on sys.path unless the project is installed; put it there so
the pack also works from a plain checkout. `PolicyPack(...)` serves the policies over gRPC and
blocks, which is why tests import `policy.policies` and never this module.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import EnforcementLevel, PolicyPack

from policy.policies import PACK_NAME, POLICIES

PolicyPack(name=PACK_NAME, enforcement_level=EnforcementLevel.MANDATORY, policies=list(POLICIES))
