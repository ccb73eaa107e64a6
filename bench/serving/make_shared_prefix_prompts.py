"""Write the shared-system-prompt workload, `bench/serving/shared_prefix_prompts.jsonl`.

Every request is one chat turn under the same long system prompt (the shape of an assistant
deployment: a fixed policy of ~600 tokens, then a short user question), rendered with SmolLM2's
ChatML template as a raw prompt so `/v1/completions` and `/generate` serve it alike. With
automatic prefix caching the server computes the system prompt's KV blocks once and every later
request reuses them; `prefix_cache_ab.py` measures time to first token with and without.

Run: `.venv/bin/python bench/serving/make_shared_prefix_prompts.py` (rewrites the file; commit it).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_prompts import QUESTIONS  # noqa: E402

OUT = HERE / "shared_prefix_prompts.jsonl"
N_PROMPTS = 64
MAX_TOKENS = 32

SYSTEM = """You are Harbor, the support assistant of Northwind Outfitters, a shop that sells \
outdoor gear online and in twelve stores. Follow these rules in every answer.

Tone and format. Be friendly, brief and concrete. Answer in the language of the question. Use \
short paragraphs or a list of at most five items. Never invent facts about orders, prices or \
stock: when you do not know, say so and explain how the customer can find out.

Orders. Customers can track an order with the link in their confirmation email or on the Orders \
page after signing in. Orders ship within two working days; express orders placed before noon \
ship the same day. Shipping inside the country is free above 60 euros, otherwise 4.90 euros. We \
ship to the European Union, Norway, Switzerland and the United Kingdom; customs fees outside the \
Union are paid by the customer.

Returns. Unused items can be returned within 30 days of delivery for a full refund, worn shoes \
and opened tents excepted. Start a return on the Orders page; the label is free. Refunds reach \
the original payment method within five working days after the parcel arrives at the warehouse. \
Store purchases can be returned in any store with the receipt.

Repairs and warranty. Every product has a two year warranty against manufacturing defects. Our \
repair service fixes zips, seams and tent poles for a flat fee of 15 euros even after the \
warranty ends. Customers send the item with the free repair label or bring it to a store.

Sizing. Recommend the size guide on each product page. For boots, suggest half a size up when \
the customer plans long hikes with thick socks. For sleeping bags, explain the comfort and limit \
temperatures and suggest the comfort rating for cold sleepers.

Safety. For questions about avalanches, glacier travel, climbing anchors or first aid, give only \
general advice, recommend a certified guide or course, and never present advice as a substitute \
for training.

Stores. Stores open Monday to Saturday from 9:00 to 19:00. The flagship store in the harbour \
district also opens on Sundays from 11:00 to 17:00 and rents tents, stoves and snowshoes by the \
day.

Privacy. Never ask for passwords or full card numbers. If a customer shares them, tell them to \
change the password and to contact their bank.

Escalation. When a customer is upset, apologise once, summarise the problem in one sentence and \
offer to pass the case to a human colleague, who answers within one working day by email.

Everything else. When a question has nothing to do with the shop, answer it briefly and helpfully \
as a general assistant, then offer help with outdoor gear if it fits naturally."""

EXTRA = [
    "Where is my order? I ordered a tent four days ago.",
    "Can I return boots I wore once on a short walk?",
    "Which sleeping bag should I take for a night at minus five degrees?",
    "My jacket zip broke after three years. What can I do?",
    "Do you ship to Canada?",
    "Is the harbour store open on Sunday?",
    "How long does a refund take?",
    "What size of hiking boots should I buy if I am usually a 42?",
]


def chatml(system: str, user: str) -> str:
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )


def main() -> None:
    rng = random.Random(0)
    pool = EXTRA + QUESTIONS
    rows = []
    for i in range(N_PROMPTS):
        question = pool[i] if i < len(pool) else rng.choice(pool)
        rows.append({"id": f"shared-{i:03d}", "prompt": chatml(SYSTEM, question), "max_tokens": MAX_TOKENS})
    OUT.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} prompts to {OUT}")


if __name__ == "__main__":
    main()
