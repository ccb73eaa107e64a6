"""Pulumi entry point: read config -> validate -> check against the cloud -> build components -> export."""

import pulumi

from components.config import ConfigError
from components.program import build, check_before_registering, read_pulumi_config

try:
    stack_config = read_pulumi_config()
    cloud_read = check_before_registering(stack_config)
except ConfigError as err:
    raise pulumi.RunError(f"invalid stack configuration:\n{err}") from None

for key, value in build(stack_config, cloud_read=cloud_read).items():
    pulumi.export(key, value)
