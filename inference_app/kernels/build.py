"""Compile, cache and register the CPU kernels (`cpu_kernels.cc`, `quant_kernels.cc`) with XLA.

The shared library is built on first use with the system C++ compiler against the FFI headers
that ship with jaxlib, for the best feature level this CPU has (`LEVELS`: the kernels choose
their instructions at compile time), and cached under a name derived from the sources, the
jaxlib version and the flags, so an upgrade or another CPU rebuilds and concurrent processes
never see a half-written file. Where no compiler is available, a prebuilt library of a lower
level that the CPU supports is used (the Docker image prebuilds them all with `--all`); where
there is none either (or `INFERENCE_APP_CPU_KERNELS=0`), `available()` is False and the model
keeps its pure-JAX path: the kernels are an optimisation, never a requirement.

Prebuild (Docker images, CI): `python -m inference_app.kernels.build [--all] [--force]`.
`INFERENCE_APP_KERNEL_LEVEL=<name>` forces a level (the tests build the portable one this way).
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
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)

ENV_SWITCH = "INFERENCE_APP_CPU_KERNELS"
ENV_CACHE_DIR = "INFERENCE_APP_KERNEL_CACHE"
ENV_LEVEL = "INFERENCE_APP_KERNEL_LEVEL"
SOURCES = ("cpu_kernels.cc", "quant_kernels.cc")
HEADERS = ("spin_pool.h",)
COMMON_FLAGS = ("-O3", "-std=c++17", "-fPIC", "-Wall", "-Werror=return-type")


@dataclass(frozen=True)
class Level:
    """A compile target: the CPU flags (/proc/cpuinfo names) it needs and the compiler flags."""

    name: str
    needs: frozenset[str]
    flags: tuple[str, ...]


# Best first. x86-64-v3 (AVX2, FMA, F16C: every x86 server since ~2015) runs the vector code;
# VNNI adds one-instruction int8 dot products; AVX512_BF16 (Zen 4+, Cooper Lake, Sapphire Rapids)
# multiplies prompt rows in bfloat16; the portable level runs the plain C++ loops.
X86_LEVELS = (
    Level(
        "x86-64-v4-vnni-bf16",
        frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16"}),
        ("-march=x86-64-v4", "-mavx512vnni", "-mavx512bf16"),
    ),
    Level(
        "x86-64-v4-vnni",
        frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni"}),
        ("-march=x86-64-v4", "-mavx512vnni"),
    ),
    Level(
        "x86-64-v3-vnni",
        frozenset({"avx2", "fma", "f16c", "bmi2", "movbe", "avx_vnni"}),
        ("-march=x86-64-v3", "-mavxvnni"),
    ),
    Level("x86-64-v3", frozenset({"avx2", "fma", "f16c", "bmi2", "movbe"}), ("-march=x86-64-v3",)),
    Level("x86-64", frozenset(), ("-march=x86-64",)),
)
OTHER_LEVELS = (Level("portable", frozenset(), ()),)

TARGETS = {  # FFI target name -> exported handler symbol
    "inference_app_cpu_matmul_s8": "CpuMatmulS8",
    "inference_app_cpu_matmul_f32": "CpuMatmulF32",
    "inference_app_cpu_matmul_bf16": "CpuMatmulBF16",
    "inference_app_cpu_attention": "CpuAttention",
    "inference_app_cpu_argmax": "CpuArgmax",
    "inference_app_cpu_rms_norm": "CpuRmsNorm",
    "inference_app_cpu_rope_qkv": "CpuRopeQkv",
    "inference_app_cpu_paged_attention": "CpuPagedAttention",
    "inference_app_quant_matmul_q4_0": "QuantMatmulQ4_0",
    "inference_app_quant_matmul_q4_1": "QuantMatmulQ4_1",
    "inference_app_quant_matmul_q8_0": "QuantMatmulQ8_0",
    "inference_app_quant_matmul_q4_0_x16": "QuantMatmulQ4_0x16",
    "inference_app_quant_matmul_q4_1_x16": "QuantMatmulQ4_1x16",
    "inference_app_quant_matmul_q8_0_x16": "QuantMatmulQ8_0x16",
}

_lock = threading.Lock()
_state: dict[str, object] = {}


class KernelBuildError(RuntimeError):
    pass


def source_dir() -> Path:
    return Path(str(resources.files("inference_app.kernels")))


def cache_dir() -> Path:
    explicit = os.environ.get(ENV_CACHE_DIR)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "inference_app" / "kernels"


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux names them (empty where /proc/cpuinfo is missing)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def all_levels() -> tuple[Level, ...]:
    return X86_LEVELS if platform.machine().lower() in ("x86_64", "amd64") else OTHER_LEVELS


def levels() -> tuple[Level, ...]:
    """The levels this CPU can run, best first (or only the one `INFERENCE_APP_KERNEL_LEVEL` names)."""
    every = all_levels()
    forced = os.environ.get(ENV_LEVEL)
    if forced:
        match = [lv for lv in every if lv.name == forced]
        if not match:
            names = ", ".join(lv.name for lv in every)
            raise KernelBuildError(f"{ENV_LEVEL}={forced!r} is not one of {names}")
        return tuple(match)
    have = cpu_flags()
    return tuple(lv for lv in every if lv.needs <= have)


def library_path(level: Level) -> Path:
    import jaxlib

    key = hashlib.sha256()
    for name in SOURCES + HEADERS:
        key.update((source_dir() / name).read_bytes())
    key.update(jaxlib.__version__.encode())
    # not the compiler: a prebuilt library must be found where none is installed
    key.update(" ".join(COMMON_FLAGS + level.flags).encode())
    return cache_dir() / f"cpu_kernels-{level.name}-{key.hexdigest()[:16]}.so"


def build(force: bool = False, level: Level | None = None) -> Path:
    """The library for `level` (default: the best this CPU runs), compiled if missing or `force`.

    Without a compiler, falls back to a cached library of a lower level the CPU also runs.
    """
    import jax.ffi

    choices = levels() if level is None else (level,)
    if not choices:
        raise KernelBuildError("no kernel level matches this CPU")
    out = library_path(choices[0])
    if out.exists() and not force:
        return out
    cxx = compiler()
    if cxx is None:
        for lv in choices[1:]:
            if library_path(lv).exists():
                return library_path(lv)
        raise KernelBuildError("no C++ compiler found (set CXX, or install g++)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        flags = [*COMMON_FLAGS, *choices[0].flags, "-isystem", jax.ffi.include_dir()]
        objects = [os.path.join(tmp, f"{Path(src).stem}.o") for src in SOURCES]
        # the two translation units compile in parallel (each ~10 s of CPU)
        pairs = zip(SOURCES, objects, strict=True)
        compiles = [[cxx, *flags, "-c", str(source_dir() / src), "-o", obj] for src, obj in pairs]
        procs = [
            (cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            for cmd in compiles
        ]
        link = [cxx, "-shared", *flags, *objects, "-o", os.path.join(tmp, "lib.so")]
        for cmd, proc in procs:
            _, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise KernelBuildError(f"{' '.join(cmd)} failed:\n{err[-4000:]}")
        done = subprocess.run(link, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise KernelBuildError(f"{' '.join(link)} failed:\n{done.stderr[-4000:]}")
        os.replace(os.path.join(tmp, "lib.so"), out)  # atomic: readers see no file or a whole one
    log.info("built CPU kernels (%s): %s", choices[0].name, out)
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


def _library_says(symbol: str) -> bool:
    """A feature flag the loaded library exports as `int symbol()`; False when not loaded."""
    return available() and bool(getattr(_state["lib"], symbol)())


def prompt_rows_bf16() -> bool:
    """Whether the loaded block kernels multiply prompt rows in bfloat16 (AVX512_BF16 levels)
    rather than float32 (`quant_kernels.cc`)."""
    return _library_says("InferenceAppPromptRowsBf16")


def packed_layout() -> bool:
    """Whether the loaded kernels take weights in the 16-row packed layout
    (`model.quant.pack16`; AVX-512 VNNI levels)."""
    return _library_says("InferenceAppPackedLayout")


def _register(path: Path) -> None:
    import jax.ffi

    lib = ctypes.CDLL(str(path))
    for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    _state["lib"] = lib  # keep the handle alive


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = sys.argv[1:]
    try:
        targets = all_levels() if "--all" in args else (None,)
        for level in targets:
            print(build(force="--force" in args, level=level))
    except KernelBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
