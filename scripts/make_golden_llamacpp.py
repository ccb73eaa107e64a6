"""Write tests/golden/smollm2_llamacpp.json: llama.cpp's greedy continuations of the golden prompts.

The transformers golden (`make_golden_smollm2.py`) is the reference for the float32 path. The
served CPU default reads the GGUF's Q4_1/Q8_0 blocks as stored with int8-rounded activations,
which is what llama.cpp does with the same file; this file is llama.cpp's own answer for the same
prompt ids, so tests can hold the default to the peer, not to our earlier output.

Needs llama.cpp built (`bash bench/serving/llamacpp.sh setup`); runs `bench/model/
llamacpp_reference.py` under its Python. Not part of `make test` (the build takes minutes).

    .venv/bin/python scripts/make_golden_llamacpp.py
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from inference_app.model.catalog import embedded_model_path
from inference_app.model.weights_gguf import gguf_tokenizer, open_gguf

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
WORK = ROOT / ".work"


def main() -> int:
    source = json.loads((GOLDEN / "smollm2_golden.json").read_text())
    prompts = [c["prompt_ids"] for c in source["cases"]]
    model = embedded_model_path("smollm2-135m")
    job = {"model": str(model), "text": prompts[0], "prompts": prompts, "new_tokens": source["new_tokens"]}
    out = subprocess.run(
        [str(WORK / "llamacpp" / "bin" / "python"), str(ROOT / "bench" / "model" / "llamacpp_reference.py")],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LLAMA_CPP_LIB_PATH": str(WORK / "llama.cpp-build" / "bin")},
    )
    peer = json.loads(out.stdout)
    tok = gguf_tokenizer(open_gguf(str(model)))
    golden = {
        "generator": "scripts/make_golden_llamacpp.py",
        "model": model.name,
        "llama_cpp_commit": (WORK / "llama.cpp-commit").read_text().strip(),
        "llama_cpp_python": peer["llama_cpp"],
        "settings": "llama.cpp defaults (its CPU kernels, f16 KV cache), greedy by argmax of its logits",
        "new_tokens": source["new_tokens"],
        "cases": [
            {"kind": c["kind"], "prompt_ids": c["prompt_ids"], "greedy_ids": g, "text_out": tok.decode(g)}
            for c, g in zip(source["cases"], peer["greedy"], strict=True)
        ],
    }
    (GOLDEN / "smollm2_llamacpp.json").write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {GOLDEN / 'smollm2_llamacpp.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
