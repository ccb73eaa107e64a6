"""Shared by the in-process and real-process server tests: the bad-input table and a server runner."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]

# The one real-model `serve` process of `make test` (tests/inference_app/conftest.py's
# `smollm2_server`): the embedded SmolLM2 with small limits and default (float32) weights, shared by the real
# clients (clients/) and the real-process tests (server/test_process.py), so the suite pays for one
# start-up and warm-up. Nothing may download at run time: the Hugging Face hub is off for it.
SMOLLM2_SLOTS, SMOLLM2_PREFILL, SMOLLM2_TARGET = 4, 256, 512
SMOLLM2_SERVER_ARGS = [
    "serve",
    "--max-slots", str(SMOLLM2_SLOTS),
    "--max-prefill-length", str(SMOLLM2_PREFILL),
    "--max-target-length", str(SMOLLM2_TARGET),
    "--max-step-tokens", "32",  # fewer step shapes to compile before healthy; prompts are short
]  # fmt: skip
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "OPENAI_API_KEY": "unused",
}


@dataclass(frozen=True)
class BadInput:
    name: str
    method: str
    path: str
    body: bytes | None
    status: int
    param: str | None = None  # the field the error must name, when there is one
    message: str | None = None  # a substring the message must contain


def _j(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def bad_inputs(max_prefill: int, max_target: int) -> list[BadInput]:
    """At least 20 malformed requests and the documented answer to each."""
    long_prompt = "hello " * (max_prefill + 10)  # > max_prefill tokens with any tokenizer here
    g = "/generate"
    return [
        BadInput("not json", "POST", g, b"prompt=hi", 400, message="not valid JSON"),
        BadInput("invalid utf-8", "POST", g, b'{"prompt": "\xff\xfe"}', 400, message="not valid UTF-8"),
        BadInput("empty body", "POST", g, b"", 400, message="empty"),
        BadInput("json array", "POST", g, b'["prompt"]', 400, message="JSON object"),
        BadInput("missing prompt", "POST", g, _j({"max_tokens": 5}), 400, "prompt", "field required"),
        BadInput("prompt is a number", "POST", g, _j({"prompt": 5}), 400, "prompt"),
        BadInput("prompt is null", "POST", g, _j({"prompt": None}), 400, "prompt"),
        BadInput("empty prompt", "POST", g, _j({"prompt": ""}), 400, "prompt"),
        BadInput(
            "max_tokens as string (OpenAI)",
            "POST",
            "/v1/completions",
            _j({"prompt": "hi", "max_tokens": "20"}),
            400,
            "max_tokens",
        ),
        BadInput("max_tokens negative", "POST", g, _j({"prompt": "hi", "max_tokens": -3}), 400, "max_tokens"),
        BadInput("max_tokens zero", "POST", g, _j({"prompt": "hi", "max_tokens": 0}), 400, "max_tokens"),
        BadInput("max_tokens float", "POST", g, _j({"prompt": "hi", "max_tokens": 2.5}), 400, "max_tokens"),
        BadInput("max_tokens huge", "POST", g, _j({"prompt": "hi", "max_tokens": 10**12}), 400, "max_tokens"),
        BadInput(
            "max_tokens beyond cache room",
            "POST",
            g,
            _j({"prompt": "hi", "max_tokens": max_target}),
            400,
            "max_tokens",
            f"at most {max_target}",
        ),
        BadInput(
            "prompt beyond prefill limit",
            "POST",
            g,
            _j({"prompt": long_prompt}),
            400,
            "prompt",
            f"at most {max_prefill}",
        ),
        BadInput(
            "misspelt field",
            "POST",
            g,
            _j({"prompt": "hi", "max_token": 5}),
            400,
            "max_token",
            "unknown field",
        ),
        BadInput(
            "negative temperature", "POST", g, _j({"prompt": "hi", "temperature": -1}), 400, "temperature"
        ),
        BadInput("top_p zero", "POST", g, _j({"prompt": "hi", "top_p": 0}), 400, "top_p"),
        BadInput("negative seed", "POST", g, _j({"prompt": "hi", "seed": -1}), 400, "seed"),
        BadInput(
            "stream not bool (OpenAI)",
            "POST",
            "/v1/completions",
            _j({"prompt": "hi", "stream": "yes"}),
            400,
            "stream",
        ),
        BadInput("stream not bool", "POST", g, _j({"prompt": "hi", "stream": "maybe"}), 400, "stream"),
        BadInput("empty stop string", "POST", g, _j({"prompt": "hi", "stop": [""]}), 400, "stop"),
        BadInput("lone surrogate", "POST", g, b'{"prompt": "\\ud800"}', 400, message="surrogate"),
        BadInput("body too large", "POST", g, _j({"prompt": "a" * (1 << 20)}), 413, message="limit"),
        BadInput("completions n=9", "POST", "/v1/completions", _j({"prompt": "hi", "n": 9}), 400, "n"),
        BadInput(
            "completions 33 prompts",
            "POST",
            "/v1/completions",
            _j({"prompt": ["a"] * 33}),
            400,
            "prompt",
            "at most 32",
        ),
        BadInput(
            "token id beyond the vocabulary",
            "POST",
            "/v1/completions",
            _j({"prompt": [1, 10**9]}),
            400,
            "prompt",
            "token ids must be in",
        ),
        BadInput(
            "a penalty (unsupported)",
            "POST",
            "/v1/completions",
            _j({"prompt": "hi", "presence_penalty": 1}),
            400,
            "presence_penalty",
            "not supported by this server",
        ),
        BadInput(
            "an image part",
            "POST",
            "/v1/chat/completions",
            _j(
                {
                    "messages": [
                        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
                    ]
                }
            ),
            400,
            "messages.0.content",
            "text only",
        ),
        BadInput(
            "json_schema the grammar cannot use",
            "POST",
            "/v1/chat/completions",
            _j(
                {
                    "messages": [{"role": "user", "content": "hi"}],
                    "response_format": {
                        "type": "json_schema",
                        "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "(("}},
                    },
                }
            ),
            400,
            "response_format.json_schema.schema",
            "cannot constrain",
        ),
        BadInput("JetStream decode without content", "POST", "/v1/generate", _j({"max_tokens": 5}), 400),
        BadInput(
            "unknown model", "POST", "/v1/completions", _j({"prompt": "hi", "model": "gpt-4"}), 404, "model"
        ),
        BadInput(
            "chat without messages", "POST", "/v1/chat/completions", _j({"messages": []}), 400, "messages"
        ),
        BadInput(
            "chat bad role",
            "POST",
            "/v1/chat/completions",
            _j({"messages": [{"role": "robot", "content": "hi"}]}),
            400,
            "messages.0.role",
        ),
        BadInput("GET on /generate", "GET", g, None, 405),
        BadInput("unknown path", "POST", "/v2/generate", _j({"prompt": "hi"}), 404),
    ]


def check_error(case: BadInput, response: Any) -> None:  # httpx or TestClient response
    """The documented answer: status, one error shape, the field named, a request id."""
    assert response.status_code == case.status, (case.name, response.status_code, response.text)
    err = response.json()["error"]
    assert err["code"] == case.status and err["message"], (case.name, err)
    assert err["request_id"] == response.headers["x-request-id"]
    if case.param is not None:
        assert err["param"] == case.param, (case.name, err)
    if case.message is not None:
        assert case.message in err["message"], (case.name, err["message"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A real server subprocess on a free loopback port; logs go to a temp file."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        module: str = "inference_app",
        nofile: int | None = None,
        cwd: Path = REPO,
    ) -> None:
        """`nofile`: the server's file descriptor limit (soft and hard); `cwd`: the source tree to run."""
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="server-", suffix=".log", delete=False)  # noqa: SIM115
        cmd = [sys.executable, "-m", module, *args, "--port", str(self.port)]

        def limit_fds() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=limit_fds,
        )
        self.health_codes: list[int] = []

    def wait_healthy(self, timeout: float) -> None:
        """Poll /healthcheck, recording every status seen, until 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.logs()[-3000:]}")
            try:
                code = httpx.get(f"{self.base}/healthcheck", timeout=2).status_code
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            self.health_codes.append(code)
            if code == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"not healthy after {timeout}s:\n{self.logs()[-3000:]}")

    def logs(self) -> str:
        return Path(self.log.name).read_text()

    def metric(self, name: str, labels: str = "") -> float:
        text = httpx.get(f"{self.base}/metrics", timeout=5).text
        key = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(key + " "):
                return float(line.split()[-1])
        raise KeyError(key)

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        if self.proc.returncode == 0:
            Path(self.log.name).unlink(missing_ok=True)  # kept (see its path in failures) otherwise
        return self.proc.returncode
