"""`python -m inference_app batch`: run a JSONL file of prompts, resumably.

Input lines are `{"id": ..., "prompt": "..."}` or `{"id": ..., "messages": [...]}` with optional
`max_tokens`, `temperature`, `top_p`, `top_k`, `seed`, `stop` and free-form `metadata`. Each output
line carries the id, the text, `finish_reason`, token counts, latency, attempts and `error`
(null on success). Lines are written in completion order; ids already finished in the output are
skipped, so re-running the same command after any crash continues where it stopped. See
`store.py` for why no line is ever torn and how `gs://` output is kept safe.

Flow: `items` (validate every line) -> this module's workers -> a `Backend` (`client`: HTTP with
retries, or `local`: the orchestrator in-process) -> `store` (the journal).

Requests go to `--endpoint` (any OpenAI-compatible server, ours included), or with `--local` to an
engine and orchestrator inside this process (no HTTP, same batching).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from inference_app.batch.client import Backend, RetryPolicy, run_item, wait_ready
from inference_app.batch.items import BatchItem, read_items
from inference_app.batch.store import ResultStore, is_final
from inference_app.engine.settings import EngineSettings, add_engine_arguments, settings_from_args
from inference_app.model.catalog import DEFAULT_MODEL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="JSONL of prompts: local path or gs:// URL")
    parser.add_argument("--output", required=True, help="JSONL of results: local path or gs:// URL")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--endpoint", help="server base URL, e.g. http://127.0.0.1:8000")
    where.add_argument("--local", action="store_true", help="run the engine in this process (no server)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument(
        "--max-tokens", type=int, default=256, help="default output budget per line (default 256)"
    )
    parser.add_argument(
        "--max-attempts", type=int, default=6, help="tries per line on 429/5xx/connection errors"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="per-request timeout in seconds")
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=900.0,
        help="how long to wait for the endpoint to come up (default 900 s)",
    )
    parser.add_argument(
        "--journal",
        type=Path,
        help="local journal for remote (gs://) output "
        "(default: a file under the temp dir named after --output)",
    )
    parser.add_argument(
        "--upload-every",
        type=float,
        default=30.0,
        help="seconds between uploads of remote output (default 30)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs stay quiet)")
    add_engine_arguments(
        parser,
        title="model and engine (--local; with --endpoint only --model applies)",
        model_help=f"with --endpoint: the model name to send (default: the server's first model); with "
        f"--local: the catalog model (default {DEFAULT_MODEL})",
    )


@dataclass
class Tally:
    """Running counts for the progress bar and the final summary."""

    start: float = field(default_factory=time.perf_counter)
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, rec: dict[str, Any]) -> None:
        if rec.get("error") is None:
            self.ok += 1
        else:
            status = rec["error"].get("status")
            self.errors[f"HTTP {status}" if status else "connection"] += 1
        self.prompt_tokens += rec.get("prompt_tokens") or 0
        self.completion_tokens += rec.get("completion_tokens") or 0

    @property
    def tok_s(self) -> float:
        return self.completion_tokens / max(time.perf_counter() - self.start, 1e-9)


async def run_items(
    todo: list[BatchItem],
    store: ResultStore,
    backend: Backend,
    concurrency: int,
    bar: tqdm,
    stop: asyncio.Event,
) -> Tally:
    """Process `todo` with `concurrency` workers, appending each record as it completes."""
    tally = Tally()
    pending = iter(todo)
    uploading: asyncio.Task[None] | None = None

    async def worker() -> None:
        nonlocal uploading
        for item in pending:  # shared iterator: each item is taken by exactly one worker
            if stop.is_set():
                return
            rec = await backend(item)
            store.append(rec)
            tally.add(rec)
            bar.update(1)
            bar.set_postfix(tok_s=f"{tally.tok_s:.1f}", errors=sum(tally.errors.values()), refresh=False)
            if store.upload_due() and (uploading is None or uploading.done()):
                uploading = asyncio.create_task(asyncio.to_thread(store.upload, store.journal.snapshot()))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if uploading is not None:
        await uploading
    return tally


async def http_backend(args: argparse.Namespace, client: httpx.AsyncClient) -> Backend:
    listed = await wait_ready(client, args.endpoint, args.ready_timeout)
    model = args.model or listed
    policy = RetryPolicy(max_attempts=args.max_attempts)

    async def call(item: BatchItem) -> dict[str, Any]:
        return await run_item(
            client, args.endpoint, item, model=model, max_tokens=args.max_tokens, policy=policy
        )

    return call


async def run(args: argparse.Namespace, local: EngineSettings | None) -> int:
    items = read_items(args.input)
    store = ResultStore(args.output, args.journal, args.upload_every)
    done = {key for key, rec in store.records.items() if is_final(rec)}
    todo = [item for item in items if item.key not in done]
    skipped = len(items) - len(todo)
    if store.journal.repaired_bytes:
        print(
            f"batch: dropped a torn last line ({store.journal.repaired_bytes} bytes) from "
            f"{store.journal.path}; that request is redone",
            file=sys.stderr,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)  # finish in-flight lines, save, exit
    bar = tqdm(
        total=len(items),
        initial=skipped,
        desc="batch",
        unit="req",
        disable=args.no_progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    try:
        if local is not None:
            from inference_app.batch.local import local_backend  # imports JAX only when needed

            async with local_backend(local, args.concurrency, args.max_tokens) as backend:
                tally = await run_items(todo, store, backend, args.concurrency, bar, stop)
        else:
            timeout = httpx.Timeout(args.timeout, connect=30.0)
            limits = httpx.Limits(
                max_connections=args.concurrency, max_keepalive_connections=args.concurrency
            )
            async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
                backend = await http_backend(args, client)
                tally = await run_items(todo, store, backend, args.concurrency, bar, stop)
    finally:
        bar.close()
        store.close()
    elapsed = time.perf_counter() - tally.start
    unfinished = sum(
        1 for item in items if not is_final(store.records.get(item.key, {"error": {"retryable": True}}))
    )
    print(
        f"batch: {len(items)} lines, {skipped} already done, {tally.ok} ok, "
        f"{sum(tally.errors.values())} errors{' ' + str(dict(tally.errors)) if tally.errors else ''}, "
        f"{tally.completion_tokens} tokens in {elapsed:.1f} s ({tally.tok_s:.1f} tok/s); "
        f"{unfinished} to retry on the next run; results in {args.output}",
        file=sys.stderr,
    )
    if stop.is_set():
        print("batch: stopped by SIGTERM; re-run the same command to continue", file=sys.stderr)
    return 0 if unfinished == 0 else 1


def main(args: argparse.Namespace) -> int:
    if args.concurrency < 1:
        print("batch: --concurrency must be >= 1", file=sys.stderr)
        return 2
    if args.max_tokens < 1:
        print("batch: --max-tokens must be >= 1", file=sys.stderr)
        return 2
    if args.max_attempts < 1:
        print("batch: --max-attempts must be >= 1", file=sys.stderr)
        return 2
    try:
        local = settings_from_args(args) if args.local else None
        return asyncio.run(run(args, local))
    except (ValueError, OSError) as exc:
        print(f"batch: {exc}", file=sys.stderr)
        return 2
