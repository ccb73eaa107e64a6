#!/bin/bash
# One configuration of our server, alone: 32 slots, bf16 weights, 64 requests of the bundled set
# at 32 concurrent (each its own max_tokens, ignore_eos), then the step counters from /metrics.
# Usage: bench/serving/serve_ab.sh LABEL [serve flags...]   (results in /tmp/bench-LABEL.json)
# Run configurations one after another, never together (they share the CPUs).
set -u
label=$1; shift
root=$(cd "$(dirname "$0")/../.." && pwd)
py=$root/.venv/bin/python
port=8123
(cd "$root" && exec "$py" -m inference_app serve --port $port --max-slots 32 --max-queue 256 \
    --log-level warning --weight-dtype bfloat16 "$@") > "/tmp/srv-$label.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/healthcheck" >/dev/null && break; sleep 1; done
"$py" -m inference_app bench --endpoint "http://127.0.0.1:$port" --api openai --num-prompts 64 \
  --concurrency 32 --fixed-output ignore_eos --warmup 2 --label "$label" \
  --output "/tmp/bench-$label.json" > "/tmp/bench-$label.txt" 2>&1
curl -s "http://127.0.0.1:$port/metrics" | grep -E "^inference_(decode_step|prefill_step)_seconds_(sum|count)"
kill $pid; wait $pid 2>/dev/null
grep -E "output tok/s|failed" "/tmp/bench-$label.txt"
