"""Does an engine's output depend on batching? 16 prompts (8 chat, 8 raw), each decoded alone,
then all together (4 slots, staggered arrivals, chunked prefill): greedy tokens and every
token's log-probability compared. Results: `results_block_weights.md`.

    .venv/bin/python bench/model/batch_invariance.py [gguf|float32|int8]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from inference_app.engine import SamplingParams
from inference_app.engine.engine import JaxEngine, model_for
from inference_app.engine.settings import EngineSettings
from tests.inference_app.engine_runs import run_chunked

wd = sys.argv[1] if len(sys.argv) > 1 else "gguf"
s = EngineSettings(
    max_slots=4, max_prefill_length=256, max_target_length=512, weight_dtype=wd, max_step_tokens=64
)
m = model_for(s)
e = JaxEngine(s, m)
tok = m.tokenizer
qs = [
    "What is the capital of France?",
    "Name three colours.",
    "Write a haiku about rain.",
    "What is 2 + 2?",
    "Who wrote Hamlet?",
    "Explain gravity in one sentence.",
    "List two fruits.",
    "What is the tallest mountain?",
]
prompts = [tok.apply_chat_template([{"role": "user", "content": q}]) for q in qs]
prompts += [
    "The capital of France is",
    "1, 2, 3, 4,",
    "def add(a, b):",
    "Once upon a time, in a land far away, there lived a small dragon who",
    "The quick brown fox",
    "Water boils at",
    "In 1969, the first humans",
    "My favourite food is",
]
ids = [tok.encode(p) for p in prompts]
sp = SamplingParams(logprobs=5)
N = 24
alone, alone_lp = [], []
for p in ids:
    lp = []
    alone.append(run_chunked(e, [p], [sp], N, logprobs=lp)[0])
    alone_lp.append(lp[0])
lp_all = []
together = run_chunked(e, ids, [sp] * len(ids), N, stagger=1, logprobs=lp_all)
diffs = 0
worst = 0.0
for i in range(len(ids)):
    a, b = alone[i], together[i]
    k = next((j for j in range(N) if a[j] != b[j]), N)
    d = max(abs(alone_lp[i][j].logprob - lp_all[i][j].logprob) for j in range(k)) if k else 0
    worst = max(worst, d)
    if k < N:
        diffs += 1
        x, y = alone_lp[i][k], lp_all[i][k]
        print(f"prompt {i} differs at {k}: alone {x.token} {x.top[:3]} together {y.token} {y.top[:3]}")
    print(i, "first diff", k, "max |dlogprob| before", f"{d:.2e}")
print(wd, "differing", diffs, "of", len(ids), "worst logprob diff before divergence", worst)
