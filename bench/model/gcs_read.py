"""Ranged reads from GCS: gcsfs vs google-cloud-storage, against a local GCS emulator.

What the loader needs from GCS is "bytes [a, b) of one object, fast": a shard's rows. This
compares the clients that can do that, on what can be measured here (no GCS, no network): a
pure-Python emulator (`gcp-storage-emulator`, PyPI) on loopback, serving one 256 MiB object.

* gcsfs `cat_ranges` over 16 MiB ranges (what `weights_hf.HFCheckpoint` does: concurrent GETs
  on gcsfs's event loop), and one `cat_file` of the whole range;
* google-cloud-storage `Blob.download_as_bytes(start, end)`: one GET, and 16 MiB ranges in a
  thread pool of 8; `transfer_manager.download_chunks_concurrently` (to a file, threads).

The emulator is single-threaded Python, so absolute numbers measure it and the clients' own
overhead on this 2-core VM, not GCS: real GCS throughput (per-connection ~100-200 MB/s, scaling
with concurrent ranged GETs) cannot be measured here. Each method's bytes are checked.

Run (the emulator is not a project dependency):
  .venv/bin/pip install --target /tmp/gcsemu gcp-storage-emulator
  PYTHONPATH=/tmp/gcsemu .venv/bin/python bench/model/gcs_read.py
Writes bench/model/gcs_read.{json,md}.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SIZE = 256 * 2**20
CHUNK = 16 * 2**20
BUCKET, OBJECT = "bench", "model.safetensors"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    port = _free_port()
    data = tempfile.mkdtemp()
    emu = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "-d", data, "start", "--host", "127.0.0.1",
         "--port", str(port), "--default-bucket", BUCKET],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    host = f"http://127.0.0.1:{port}"
    os.environ["STORAGE_EMULATOR_HOST"] = host
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        import gcsfs
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage
        from google.cloud.storage import transfer_manager

        payload = np.random.default_rng(0).integers(0, 255, SIZE, np.uint8).tobytes()
        client = storage.Client(project="bench", credentials=AnonymousCredentials())
        blob = client.bucket(BUCKET).blob(OBJECT)
        blob.upload_from_string(payload)
        fs = gcsfs.GCSFileSystem(endpoint_url=host, token="anon")
        path = f"{BUCKET}/{OBJECT}"
        bounds = list(range(0, SIZE, CHUNK))

        def gcsfs_cat_ranges() -> bytes:
            return b"".join(fs.cat_ranges([path] * len(bounds), bounds, [b + CHUNK for b in bounds]))

        def gcsfs_one_get() -> bytes:
            return bytes(fs.cat_file(path, 0, SIZE))

        def gcs_one_get() -> bytes:
            return bytes(blob.download_as_bytes(start=0, end=SIZE - 1))

        def gcs_threads() -> bytes:
            with ThreadPoolExecutor(8) as ex:
                parts = ex.map(lambda b: blob.download_as_bytes(start=b, end=b + CHUNK - 1), bounds)
                return b"".join(parts)

        def gcs_transfer_manager() -> bytes:
            with tempfile.NamedTemporaryFile() as f:
                transfer_manager.download_chunks_concurrently(
                    client.bucket(BUCKET).get_blob(OBJECT), f.name, chunk_size=CHUNK, max_workers=8,
                    worker_type=transfer_manager.THREAD,
                )  # fmt: skip
                return Path(f.name).read_bytes()

        methods = {
            "gcsfs cat_ranges (16 MiB, concurrent)": gcsfs_cat_ranges,
            "gcsfs cat_file (one GET)": gcsfs_one_get,
            "google-cloud-storage download_as_bytes (one GET)": gcs_one_get,
            "google-cloud-storage 16 MiB ranges, 8 threads": gcs_threads,
            "google-cloud-storage transfer_manager (8 threads, to a file)": gcs_transfer_manager,
        }
        rows: list[dict[str, Any]] = []
        for rep in range(2):  # alternate the methods, so load drift hits them alike
            for name, fn in methods.items():
                cpu0 = resource.getrusage(resource.RUSAGE_SELF)
                start = time.perf_counter()
                got = fn()
                secs = time.perf_counter() - start
                cpu1 = resource.getrusage(resource.RUSAGE_SELF)
                cpu = cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime
                if got != payload:
                    raise AssertionError(f"{name}: wrong bytes")
                rows.append({"method": name, "rep": rep, "seconds": round(secs, 3),
                             "mb_s": round(SIZE / secs / 1e6, 1), "client_cpu_s": round(cpu, 2),
                             "load": round(os.getloadavg()[0], 2)})  # fmt: skip
                print(rows[-1], flush=True)
    finally:
        emu.terminate()
        emu.wait(timeout=10)
    out = {"date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "object_mib": SIZE // 2**20,
           "command": "PYTHONPATH=/tmp/gcsemu .venv/bin/python bench/model/gcs_read.py",
           "runs": rows}  # fmt: skip
    (HERE / "gcs_read.json").write_text(json.dumps(out, indent=1) + "\n")
    md = [
        f"# Ranged GCS reads against a local emulator ({out['date_utc']} UTC)",
        "",
        f"One {out['object_mib']} MiB object on `gcp-storage-emulator` (pure Python, loopback). Measures the "
        "emulator and client overhead on a shared 2-core VM, not GCS. Command: `" + out["command"] + "`.",
        "",
        "`client CPU s` is this (client) process's CPU time: what the client itself costs, whatever",
        "the emulator's speed.",
        "",
        "| method | run | seconds | MB/s | client CPU s | load avg |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['method']} | {r['rep']} | {r['seconds']} | {r['mb_s']} | {r['client_cpu_s']} "
            f"| {r['load']} |"
            for r in rows
        ],
    ]
    (HERE / "gcs_read.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
