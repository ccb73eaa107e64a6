"""Crash-safe, resumable result storage (last step of `batch`: records in, JSONL out).

Results are appended to a *journal*: a local JSONL file written with one `write()` of a whole
line per result on an O_APPEND descriptor, fsynced at least once a second and on close. A kill -9
can therefore only ever leave an incomplete *last* line; opening the journal again truncates
that tail (the request is simply redone), so every line a reader sees is a complete record.

- Local output (a path or `file://`): the output file is the journal itself.
- Object-store output (`gs://...`, or any other fsspec URL): objects cannot be appended to, so
  the journal lives on local disk (`--journal`, default under the system temp dir, named after
  the output URL) and a snapshot of it — always ending on a line boundary — replaces the whole
  output object every `--upload-every` seconds and at exit. A GCS upload is atomic: readers see
  the previous or the new complete object. On start the existing output object is merged into
  the journal, so a fresh pod (empty disk) resumes from what was uploaded; at most the results
  of the last interval are redone, none are lost.

A record whose error is retryable (429/5xx/connection, retries exhausted) does not count as
done: a re-run tries that id again. Later lines for an id supersede earlier ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import fsspec


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> Path:
    return Path(url[len("file://") :] if url.startswith("file://") else url)


def is_final(record: dict[str, Any]) -> bool:
    """Done for resume purposes: a success or a permanent error."""
    error = record.get("error")
    return error is None or not (isinstance(error, dict) and error.get("retryable"))


def parse_records(data: bytes) -> dict[str, dict[str, Any]]:
    """Complete lines of a journal -> latest record per id key."""
    out: dict[str, dict[str, Any]] = {}
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # only a torn tail can be invalid, and it is truncated before appending
        if isinstance(rec, dict) and "id" in rec:
            out[json.dumps(rec["id"])] = rec
    return out


class Journal:
    """Append-only JSONL on local disk; repairs a torn tail on open."""

    def __init__(self, path: Path, fsync_interval_s: float = 1.0) -> None:
        self.path = path
        self.fsync_interval_s = fsync_interval_s
        path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired_bytes = self._truncate_torn_tail()
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.records = parse_records(path.read_bytes())
        self._last_sync = time.monotonic()

    def _truncate_torn_tail(self) -> int:
        if not self.path.exists():
            return 0
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1  # 0 when there is no complete line at all
        if keep < len(data):
            with self.path.open("r+b") as f:
                f.truncate(keep)
                os.fsync(f.fileno())
        return len(data) - keep

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(line)
        while view:  # write() may be partial; loop until the whole line is in the file
            view = view[os.write(self.fd, view) :]
        self.records[json.dumps(record["id"])] = record
        if time.monotonic() - self._last_sync >= self.fsync_interval_s:
            os.fsync(self.fd)
            self._last_sync = time.monotonic()

    def merge(self, records: dict[str, dict[str, Any]]) -> None:
        """Add records (from a remote copy) that the local journal lacks."""
        for key, rec in records.items():
            if key not in self.records:
                self.append(rec)

    def snapshot(self) -> bytes:
        """The journal's bytes now; called between appends, so it ends on a line boundary."""
        os.fsync(self.fd)
        return self.path.read_bytes()

    def close(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)


def default_journal_path(output_url: str) -> Path:
    digest = hashlib.sha256(output_url.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "inference_app-batch" / f"{digest}.jsonl"


class ResultStore:
    """Where results go: the journal, mirrored to a remote object when the output is remote."""

    def __init__(
        self, output_url: str, journal_path: Path | None = None, upload_every_s: float = 30.0
    ) -> None:
        self.output_url = output_url
        self.remote = not is_local(output_url)
        self.upload_every_s = upload_every_s
        self._last_upload = time.monotonic()
        if self.remote:
            self.fs, self.remote_path = fsspec.core.url_to_fs(output_url)
            self.journal = Journal(journal_path or default_journal_path(output_url))
            if self.fs.exists(self.remote_path):
                self.journal.merge(parse_records(self.fs.cat_file(self.remote_path)))
        else:
            self.journal = Journal(local_path(output_url))

    @property
    def records(self) -> dict[str, dict[str, Any]]:
        return self.journal.records

    def append(self, record: dict[str, Any]) -> None:
        self.journal.append(record)

    def upload_due(self) -> bool:
        return self.remote and time.monotonic() - self._last_upload >= self.upload_every_s

    def upload(self, data: bytes) -> None:
        """Replace the remote object with a line-aligned snapshot (atomic on GCS)."""
        self.fs.pipe_file(self.remote_path, data)
        self._last_upload = time.monotonic()

    def close(self) -> None:
        if self.remote:
            self.upload(self.journal.snapshot())
        self.journal.close()
