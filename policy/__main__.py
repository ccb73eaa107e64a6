"""Entry point the Pulumi CLI runs for `pulumi preview --policy-pack policy`.

The CLI runs this file as the pack's entry point. Run as a script (not `python -m policy`), the
repository root that holds the `policy` package is on sys.path only if the project is installed,
so it is added here: the pack then also works from a plain checkout. `PolicyPack(...)` serves the
policies over gRPC and blocks, which is why tests import `policy.policies` and never this module.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import EnforcementLevel, PolicyPack

from policy.policies import PACK_NAME, POLICIES

PolicyPack(name=PACK_NAME, enforcement_level=EnforcementLevel.MANDATORY, policies=list(POLICIES))
