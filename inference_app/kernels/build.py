"""Compile, cache and register the CPU kernels (`cpu_kernels.cc`) with XLA.

The shared library is built on first use with the system C++ compiler against the FFI headers
that ship with jaxlib, and cached under a name derived from the source, the jaxlib version and
the flags, so an upgrade rebuilds and concurrent processes never see a half-written file. Where
no compiler is available (or `INFERENCE_APP_CPU_KERNELS=0`), `available()` is False and the model
keeps its pure-JAX path: the kernels are an optimisation, never a requirement.

Prebuild (Docker images, CI): `python -m inference_app.kernels.build`.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)

ENV_SWITCH = "INFERENCE_APP_CPU_KERNELS"
ENV_CACHE_DIR = "INFERENCE_APP_KERNEL_CACHE"
# x86-64-v3 (AVX2 + FMA, every x86 server since ~2015) is the baseline; the hot loops carry an
# AVX-512 clone picked at load time where the CPU has it.
X86_FLAGS = ("-march=x86-64-v3",)
COMMON_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-Wall", "-Werror=return-type")
TARGETS = {  # FFI target name -> exported handler symbol
    "inference_app_cpu_matmul_s8": "CpuMatmulS8",
    "inference_app_cpu_matmul_f32": "CpuMatmulF32",
    "inference_app_cpu_matmul_bf16": "CpuMatmulBF16",
    "inference_app_cpu_attention": "CpuAttention",
    "inference_app_cpu_argmax": "CpuArgmax",
    "inference_app_cpu_paged_attention": "CpuPagedAttention",
}

_lock = threading.Lock()
_state: dict[str, object] = {}


class KernelBuildError(RuntimeError):
    pass


def source() -> Path:
    return Path(str(resources.files("inference_app.kernels").joinpath("cpu_kernels.cc")))


def cache_dir() -> Path:
    explicit = os.environ.get(ENV_CACHE_DIR)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "inference_app" / "kernels"


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")


def flags() -> tuple[str, ...]:
    machine = platform.machine().lower()
    arch = X86_FLAGS if machine in ("x86_64", "amd64") else ()
    return COMMON_FLAGS + arch


def library_path() -> Path:
    import jaxlib

    key = hashlib.sha256()
    key.update(source().read_bytes())
    key.update(jaxlib.__version__.encode())
    key.update(" ".join(flags()).encode())  # not the compiler: a prebuilt library must be found
    return cache_dir() / f"cpu_kernels-{key.hexdigest()[:16]}.so"


def build(force: bool = False) -> Path:
    """Compile the library if the cached one is missing (or `force`); return its path."""
    import jax.ffi

    out = library_path()
    if out.exists() and not force:
        return out
    cxx = compiler()
    if cxx is None:
        raise KernelBuildError("no C++ compiler found (set CXX, or install g++)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [cxx, *flags(), "-isystem", jax.ffi.include_dir(), str(source()), "-o", tmp]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise KernelBuildError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
        os.replace(tmp, out)  # atomic: readers see no file or a whole one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("built CPU kernels: %s", out)
    return out


def available() -> bool:
    """True once the kernels are compiled, loaded and registered (built on the first call)."""
    with _lock:
        if "ok" in _state:
            return bool(_state["ok"])
        ok = False
        if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
            log.info("CPU kernels disabled by %s", ENV_SWITCH)
        else:
            try:
                _register(build())
                ok = True
            except Exception as exc:  # any failure leaves the pure-JAX path in place
                log.warning("CPU kernels unavailable, using the pure-JAX path: %s", exc)
        _state["ok"] = ok
        return ok


def _register(path: Path) -> None:
    import jax.ffi

    lib = ctypes.CDLL(str(path))
    for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    _state["lib"] = lib  # keep the handle alive


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = build(force="--force" in sys.argv[1:])
    except KernelBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
