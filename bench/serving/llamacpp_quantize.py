"""Make the Q8_0 GGUF for the batch-1 int8 comparison from the bundled Q4_1 file (no download).

Runs under llama.cpp's own Python (`.work/llamacpp/bin/python`), not the project venv: it calls
llama.cpp's quantizer (`llama_model_quantize`) through llama-cpp-python. Requantizing Q4_1 ->
Q8_0 keeps the same weight values up to Q8_0 rounding, which is also what our int8 engine loads
(it dequantizes the same Q4_1 file and quantizes per channel to int8), so both sides serve the
same model at 8 bits.

Usage: .work/llamacpp/bin/python bench/serving/llamacpp_quantize.py SRC.gguf DST-Q8_0.gguf
"""

from __future__ import annotations

import sys
from pathlib import Path

import llama_cpp


def main(src: str, dst: str) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.allow_requantize = True  # the source is already quantized (Q4_1)
    params.nthread = 2
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed with code {rc}")
    print(f"wrote {dst} ({Path(dst).stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
