#!/bin/bash
# A/B of our server between checkouts (each with its own .venv): 32 slots, concurrency 1 and 32.
# Usage: bench/serving/row_buckets_ab.sh LABEL=DIR [LABEL=DIR ...]   (results in /tmp/ab-LABEL-cN.json)
set -u
bench=$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin/python
port=8101
for spec in "$@"; do
  label=${spec%%=*}; dir=${spec#*=}
  (cd "$dir" && exec .venv/bin/python -m inference_app serve --port $port --max-slots 32 \
      --compilation-cache-dir "/tmp/jaxcache-$label") > "/tmp/serve-$label.log" 2>&1 &
  pid=$!
  for i in $(seq 1 400); do curl -sf "localhost:$port/healthcheck" >/dev/null && break; sleep 1; done
  echo "$label healthy after $i s"; grep -i "Warm-up done" "/tmp/serve-$label.log"
  for c in 1 32; do
    n=$(( c == 1 ? 6 : 64 ))
    "$bench" -m inference_app bench --endpoint "http://127.0.0.1:$port" --api openai --num-prompts $n \
      --concurrency $c --max-tokens 32 --fixed-output ignore_eos --output "/tmp/ab-$label-c$c.json" \
      --label "$label" > "/tmp/ab-$label-c$c.txt" 2>&1
    echo "== $label c=$c"; grep -E "output tok/s|tpot|ttft|failed" "/tmp/ab-$label-c$c.txt"
  done
  kill -TERM $pid; wait $pid
  port=$((port + 1))
done
uptime
