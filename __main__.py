"""Pulumi entry point: read config -> validate -> build components -> export."""

import pulumi

from components.config import ConfigError
from components.program import build, read_pulumi_config

try:
    stack_config = read_pulumi_config()
except ConfigError as err:
    raise pulumi.RunError(f"invalid stack configuration:\n{err}") from None

for key, value in build(stack_config).items():
    pulumi.export(key, value)
