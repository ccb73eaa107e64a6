"""Settings of the HTTP layer (the engine's own settings are `EngineSettings`).

Built once by `server/cli.py` from its flags and handed to `create_app`; routes read them through
the serving state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from inference_app.model.catalog import CATALOG, DEFAULT_MODEL
from inference_app.server.limits import HttpLimits


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str = CATALOG[DEFAULT_MODEL].hf_id  # the id reported by /v1/models and in responses
    model_aliases: tuple[str, ...] = (DEFAULT_MODEL,)  # other names a request's `model` may use
    max_queue: int = 64  # admitted requests waiting for prefill; beyond it: 429
    max_queue_wait_s: float = 10.0  # expected wait in the queue over this: 503 at once (0: no budget)
    drain_timeout_s: float = 30.0  # SIGTERM: how long in-flight requests may take to finish
    warmup: bool = True  # compile every prefill bucket, insert and generate before /healthcheck is 200
    chat_default_max_tokens: int = 256  # chat without max_tokens (capped by the cache room)
    docs: bool = False  # serve the interactive API page at /docs (the schema at /openapi.json always)
    limits: HttpLimits = field(default_factory=HttpLimits)  # sizes, timeouts, connection cap

    def serves(self, model: str) -> bool:
        return model == self.model_name or model in self.model_aliases
