"""A small deterministic Engine for fast orchestrator/route tests, and a way to serve it.

`FakeEngine` honours the `Engine` protocol, with both capabilities (`BatchedPrefill`, and
`ChunkedPrefill` when built with `chunked_prefill=True`), and *checks the caller*: inserting into
an occupied slot, decoding past `max_target_length`, or prefilling an over-long prompt raises, so
orchestrator bugs surface as test failures. Tokens are UTF-8 bytes (ids 0..255) plus EOS (256);
the greedy continuation of a prompt walks a fixed text (with multi-byte characters) from an offset
derived from the prompt, and emits EOS at the end of that text. Output for a prompt depends only
on the prompt and sampling, never on batch composition — like a correct real engine. Asked for
log-probabilities (`PromptScoring` too), every token is its position's most likely, at
`fake_logprobs`.

Run as a server (real process, fake model; used by the signal and disconnect tests):
    python -m tests.inference_app.fakes --port 8123 [--step-delay 0.02] [--max-slots 4]
"""

from __future__ import annotations

import argparse
import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from inference_app.engine.api import (
    MAX_TOP_LOGPROBS,
    Engine,
    EngineSettings,
    Prefix,
    SamplingParams,
    StepLogprobs,
    StepOutput,
    Tokenizer,
    TokenLogprobs,
)
from inference_app.engine.buckets import fit

EOS = 256
CORPUS = (
    "The quick brown fox jumps over the lazy dog. Café crème, naïve façade, 🙂 and ☕ please. "
    "Numbers 12345 follow; then a STOP word, and more text after it to keep going for a while. "
)
CORPUS_IDS: tuple[int, ...] = (*CORPUS.encode("utf-8"), EOS)


class ByteTokenizer:
    """UTF-8 bytes as tokens; invalid sequences decode to U+FFFD like real byte-level BPE."""

    eos_token_ids: frozenset[int] = frozenset({EOS})
    vocab_size: int = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def apply_chat_template(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        text = "".join(f"<|{m['role']}|>{m['content']}\n" for m in messages)
        return text + ("<|assistant|>" if add_generation_prompt else "")

    def encode_chat(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        # bytes: there are no control tokens to forge
        return self.encode(self.apply_chat_template(messages, add_generation_prompt))


def continuation_start(prompt_ids: Sequence[int], sampling: SamplingParams) -> int:
    """Where in CORPUS_IDS a prompt's continuation starts (sampling picks a seeded offset)."""
    base = sum(prompt_ids) + len(prompt_ids)
    if not sampling.greedy:
        base += random.Random(sampling.seed).randrange(1, len(CORPUS_IDS))
    return base % len(CORPUS_IDS)


def expected_ids(
    prompt_ids: Sequence[int], max_tokens: int, sampling: SamplingParams | None = None
) -> list[int]:
    """What the fake generates for a prompt (up to and including EOS), for test assertions."""
    start = continuation_start(prompt_ids, sampling or SamplingParams())
    out = list(CORPUS_IDS[start : start + max_tokens])
    return out


def fake_logprobs(token: int, top: int) -> TokenLogprobs:
    """What the fake reports for `token`: the most likely at -0.25, then ids after it at -1, -2, ..."""
    alternatives = [(token, -0.25)] + [((token + i) % 257, -float(i)) for i in range(1, MAX_TOP_LOGPROBS)]
    return TokenLogprobs(token, -0.25, tuple(alternatives[:top]))


class DonatableTokens:
    """A step's token array that a later `insert` invalidates, as JAX buffer donation does."""

    def __init__(self, values: np.ndarray) -> None:
        self._values: np.ndarray | None = values

    def delete(self) -> None:
        self._values = None

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        if self._values is None:
            raise RuntimeError("Array has been deleted (donated to a later insert)")
        return self._values


@dataclass
class _Slot:
    cursor: int  # index into CORPUS_IDS of the next token
    position: int  # cache position the next decode step writes
    prefill_steps: int = 0  # chunked prefill: steps until the prompt's last chunk has run
    logprobs: bool = False  # the request asked for log-probabilities


@dataclass
class FakeEngine:
    """Deterministic, fast, strict about the protocol. Delays make timing-dependent tests stable."""

    settings: EngineSettings = field(
        default_factory=lambda: EngineSettings(max_slots=4, max_prefill_length=64, max_target_length=160)
    )
    step_delay: float = 0.0
    prefill_delay: float = 0.0
    warmup_delay: float = 0.0
    prefill_buckets: tuple[int, ...] = (16, 32, 64)
    # Chunked prefill (`add_prompt`): a prompt takes one step per `prefill_chunk` of its tokens,
    # and the step that runs its last chunk yields its first token.
    chunked_prefill: bool = False
    prefill_chunk: int = 16
    step_buckets: tuple[int, ...] = (4,)  # reported only: the fake compiles nothing
    # Chunked prefill: KV tokens all slots may reserve together (prompt + max new tokens each),
    # as a paged cache bounds admission; None: only the slots bound it.
    kv_tokens: int | None = None

    def __post_init__(self) -> None:
        self.tokenizer: Tokenizer = ByteTokenizer()
        self.mode = self.settings.mode
        self.max_slots = self.settings.max_slots
        self.max_prefill_length = self.settings.max_prefill_length
        self.max_target_length = self.settings.max_target_length
        self._slots: list[_Slot | None] = [None] * self.settings.max_slots
        self._reserved: dict[int, int] = {}  # slot -> KV tokens its request reserved
        self.inserts = 0
        self.steps = 0
        self.prefills = 0
        self.batch_sizes: list[int] = []  # one entry per prefill_many call
        self.max_active = 0
        self.warmed_up = False
        self.gate = threading.Event()  # clear it to pause decoding (tests of queues and drain)
        self.gate.set()
        self.held = threading.Event()  # set while a step waits for the gate
        self._lock = threading.Lock()
        self._last_tokens: DonatableTokens | None = None

    @property
    def active(self) -> int:
        return sum(s is not None for s in self._slots)

    def prefill(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> Prefix:
        if not 0 < len(prompt_ids) <= self.max_prefill_length:
            raise ValueError(f"prefill of {len(prompt_ids)} tokens (limit {self.max_prefill_length})")
        time.sleep(self.prefill_delay)
        self.prefills += 1
        start = continuation_start(prompt_ids, sampling)
        first = CORPUS_IDS[start]
        lp = None if sampling.logprobs is None else fake_logprobs(first, sampling.logprobs)
        return Prefix(first_token=first, length=len(prompt_ids), kv=start + 1, sampling=sampling, logprobs=lp)

    def score_prompt(self, prompt_ids: Sequence[int], top: int) -> list[TokenLogprobs]:
        return [fake_logprobs(t, top) for t in prompt_ids[1:]]

    def prefill_bucket(self, length: int) -> int:
        bucket = fit(self.prefill_buckets, length)
        if bucket is None:
            raise ValueError(f"prompt of {length} tokens (limit {self.prefill_buckets[-1]})")
        return bucket

    def prefill_batch_rows(self, bucket: int) -> int:
        return self.settings.max_prefill_batch

    def prefill_many(
        self, prompts: Sequence[Sequence[int]], samplings: Sequence[SamplingParams]
    ) -> list[Prefix]:
        if (
            len({self.prefill_bucket(len(p)) for p in prompts}) != 1
            or len(prompts) > self.settings.max_prefill_batch
        ):
            raise RuntimeError(f"batch breaks the engine's limits: {[len(p) for p in prompts]}")
        self.batch_sizes.append(len(prompts))
        out = []
        for ids, sp in zip(prompts, samplings, strict=True):
            out.append(self.prefill(ids, sp))
        return out

    def transfer(self, prefix: Prefix) -> Prefix:
        return prefix

    def insert(self, prefix: Prefix, slot: int) -> None:
        with self._lock:
            if self._slots[slot] is not None:
                raise RuntimeError(f"insert into occupied slot {slot}")
            self._slots[slot] = _Slot(
                cursor=int(prefix.kv), position=prefix.length, logprobs=prefix.sampling.logprobs is not None
            )
            if self._last_tokens is not None:
                self._last_tokens.delete()  # like JaxEngine, which donates its token buffer here
            self.inserts += 1
            self.max_active = max(self.max_active, self.active)

    def can_admit(self, prompt_ids: Sequence[int], max_new_tokens: int) -> bool:
        need = len(prompt_ids) + max_new_tokens
        with self._lock:
            free = None if self.kv_tokens is None else self.kv_tokens - sum(self._reserved.values())
        return need <= self.max_target_length and (free is None or need <= free)

    def add_prompt(
        self,
        slot: int,
        prompt_ids: Sequence[int],
        sampling: SamplingParams,
        max_new_tokens: int | None = None,
    ) -> None:
        if not self.chunked_prefill:
            raise RuntimeError("add_prompt on an engine without chunked prefill")
        if not 0 < len(prompt_ids) <= self.max_prefill_length:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens (limit {self.max_prefill_length})")
        if not self.can_admit(prompt_ids, max_new_tokens or 1):
            raise RuntimeError(f"add_prompt of a request the KV cache cannot hold now (slot {slot})")
        with self._lock:
            if self._slots[slot] is not None:
                raise RuntimeError(f"add_prompt into occupied slot {slot}")
            self._reserved[slot] = len(prompt_ids) + (max_new_tokens or 1)
            steps = -(-len(prompt_ids) // self.prefill_chunk)
            start = continuation_start(prompt_ids, sampling)
            asks = sampling.logprobs is not None
            self._slots[slot] = _Slot(start, len(prompt_ids), prefill_steps=steps, logprobs=asks)
            self.prefills += 1
            self.max_active = max(self.max_active, self.active)

    def generate(self) -> StepOutput:
        if not self.gate.is_set():
            self.held.set()
            self.gate.wait()
            self.held.clear()
        time.sleep(self.step_delay)
        out = np.zeros(self.max_slots, dtype=np.int32)
        emitted = []
        with self._lock:
            for i, s in enumerate(self._slots):
                if s is None:
                    continue
                if s.prefill_steps > 0:  # chunked: a prompt chunk, and its first token at the end
                    s.prefill_steps -= 1
                    if s.prefill_steps > 0:
                        continue
                    out[i] = CORPUS_IDS[s.cursor % len(CORPUS_IDS)]
                    s.cursor += 1
                    emitted.append(i)
                    continue
                if s.position >= self.max_target_length:
                    raise RuntimeError(f"slot {i} decodes past max_target_length={self.max_target_length}")
                out[i] = CORPUS_IDS[s.cursor % len(CORPUS_IDS)]
                s.cursor += 1
                s.position += 1
                emitted.append(i)
            self.steps += 1
            self._last_tokens = DonatableTokens(out)
            asked = any(s is not None and s.logprobs for s in self._slots)
        rows = [fake_logprobs(int(t), MAX_TOP_LOGPROBS) for t in out]
        logprobs = (
            StepLogprobs(
                out.copy(),
                np.array([r.logprob for r in rows], np.float32),
                np.array([[t for t, _ in r.top] for r in rows], np.int32),
                np.array([[p for _, p in r.top] for r in rows], np.float32),
            )
            if asked
            else None
        )
        slots = tuple(emitted) if self.chunked_prefill else None
        return StepOutput(tokens=self._last_tokens, slots=slots, logprobs=logprobs)

    def release(self, slot: int) -> None:
        with self._lock:
            self._slots[slot] = None
            self._reserved.pop(slot, None)

    def warmup(self) -> None:
        time.sleep(self.warmup_delay)
        self.warmed_up = True


def main(argv: list[str] | None = None) -> int:
    """Serve a FakeEngine through the real server entry point (signals, sockets, drain)."""
    from inference_app.server.cli import LOG_FORMAT, ServerOptions, run_server
    from inference_app.server.limits import add_http_limit_arguments, http_limits_from_args

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--step-delay", type=float, default=0.02)
    p.add_argument("--warmup-delay", type=float, default=0.5)
    p.add_argument("--max-slots", type=int, default=4)
    p.add_argument("--max-queue", type=int, default=8)
    p.add_argument("--max-queue-wait", type=float, default=ServerOptions.max_queue_wait_s)
    p.add_argument("--drain-timeout", type=float, default=30.0)
    add_http_limit_arguments(p)
    args = p.parse_args(argv)
    settings = EngineSettings(max_slots=args.max_slots, max_prefill_length=64, max_target_length=400)

    def factory() -> Engine:
        return FakeEngine(settings=settings, step_delay=args.step_delay, warmup_delay=args.warmup_delay)

    options = ServerOptions(
        host="127.0.0.1",
        port=args.port,
        model_name="fake",
        max_queue=args.max_queue,
        max_queue_wait_s=args.max_queue_wait,
        drain_timeout_s=args.drain_timeout,
        limits=http_limits_from_args(args),
    )
    return run_server(options, factory)


if __name__ == "__main__":
    raise SystemExit(main())
