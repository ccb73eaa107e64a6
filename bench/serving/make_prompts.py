"""Write the bundled benchmark prompt set, `inference_app/data/bench_prompts.jsonl`.

The set is generated here (deterministically, seed 0) from short texts written for this project,
so no dataset is downloaded. It mixes five request shapes seen in real traffic: short chat
questions, summaries of long notes, record extraction, code requests and story continuations,
giving prompts from ~10 to ~450 tokens and output budgets from 16 to 256 tokens.

Lines are also valid `batch` input (`metadata` is carried to the output).

Run: `.venv/bin/python bench/serving/make_prompts.py` (rewrites the file; commit the result).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "inference_app" / "data" / "bench_prompts.jsonl"
N_PROMPTS = 200

QUESTIONS = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "Give me three tips for sleeping better.",
    "Explain what a hash table is in two sentences.",
    "How do plants make food from sunlight?",
    "What should I pack for a weekend hiking trip?",
    "What is the difference between weather and climate?",
    "How does a bicycle stay upright?",
    "Suggest a name for a small bakery by the sea.",
    "What are the main causes of inflation?",
    "How do I boil an egg so the yolk stays soft?",
    "Explain recursion to a ten year old.",
    "What is a good way to learn a new language?",
    "Why do cats purr?",
    "What is the boiling point of water at high altitude, and why does it change?",
    "Describe the water cycle.",
    "List some healthy breakfast ideas.",
    "What does a compiler do?",
    "How can I make my emails clearer?",
    "What is the Pythagorean theorem used for?",
    "Write a haiku about autumn rain.",
    "Why do we have leap years?",
    "What is the role of the heart in the human body?",
    "How do vaccines train the immune system?",
    "Give two arguments for and against working from home.",
]
CITIES = ["Lyon", "Osaka", "Denver", "Porto", "Nairobi", "Gdansk", "Perth", "Quito", "Tampere", "Austin"]
ITEMS = ["bolts", "lamps", "chairs", "sensors", "bicycles", "kettles", "cables", "boots", "tents", "drills"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
PEOPLE = ["Ana", "Bilal", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana", "Ivo", "Julia", "Kofi", "Lena"]
ROLES = ["engineer", "nurse", "teacher", "pilot", "chef", "designer", "farmer", "lawyer", "baker"]
TASKS = [
    "returns the n-th Fibonacci number iteratively",
    "checks whether a string is a palindrome, ignoring case and spaces",
    "merges two sorted lists into one sorted list",
    "counts how often each word appears in a text",
    "parses a date in YYYY-MM-DD format and returns the weekday",
    "removes duplicate items from a list while keeping their order",
    "computes the median of a list of numbers",
    "converts a temperature from Celsius to Fahrenheit and back",
    "finds the longest common prefix of a list of strings",
    "validates that a password has a digit, a capital letter and 8+ characters",
]
STORY_OPENINGS = [
    "The lighthouse keeper had not seen a ship in eleven days when the radio crackled.",
    "Mira found the key taped under the third stair, exactly where her grandmother said it would be.",
    "On the morning the river froze, the whole village came out to walk on it.",
    "The robot had been built to sort letters, but it had started reading them.",
    "Nobody in the small mountain town remembered who had planted the orange tree.",
    "The train stopped in the middle of the desert and the conductor asked everyone to stay calm.",
    "When the library reopened after the flood, one book was missing from every shelf.",
    "The new teacher arrived with a violin case and refused to say what was inside.",
]


def note_lines(rng: random.Random, n: int) -> list[str]:
    """Warehouse-log style sentences: realistic, varied and cheap to make long."""
    return [
        f"On {rng.choice(DAYS)} the {rng.choice(CITIES)} warehouse shipped {rng.randint(5, 900)} "
        f"{rng.choice(ITEMS)} and reported {rng.randint(0, 40)} damaged on arrival."
        for _ in range(n)
    ]


def records(rng: random.Random, n: int) -> list[str]:
    return [
        f"{rng.choice(PEOPLE)} {chr(65 + rng.randint(0, 25))}., {rng.randint(21, 67)}, "
        f"{rng.choice(ROLES)}, lives in {rng.choice(CITIES)}"
        for _ in range(n)
    ]


def make(rng: random.Random) -> dict[str, object]:
    kind = rng.choices(["chat", "summary", "extract", "code", "story"], weights=[30, 20, 15, 15, 20])[0]
    if kind == "chat":
        prompt, max_tokens = rng.choice(QUESTIONS), rng.choice([32, 64, 96, 128])
    elif kind == "summary":
        lines = note_lines(rng, rng.randint(4, 18))
        prompt = "Summarize the following shipping notes in a short paragraph.\n\n" + "\n".join(lines)
        max_tokens = rng.choice([64, 96, 128])
    elif kind == "extract":
        rows = records(rng, rng.randint(5, 25))
        role = rng.choice(ROLES)
        prompt = (
            "Here is a list of people (name, age, job, city):\n" + "\n".join(rows)
            + f"\n\nList the names of everyone who works as a {role}, one per line."
        )
        max_tokens = rng.choice([16, 32, 48])
    elif kind == "code":
        prompt = f"Write a Python function that {rng.choice(TASKS)}. Add a short docstring and an example."
        max_tokens = rng.choice([128, 192, 256])
    else:
        prompt = rng.choice(STORY_OPENINGS) + " Continue the story."
        max_tokens = rng.choice([128, 192, 256])
    return {"prompt": prompt, "max_tokens": max_tokens, "metadata": {"kind": kind}}


def main() -> None:
    rng = random.Random(0)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", encoding="utf-8") as f:
        for i in range(N_PROMPTS):
            f.write(json.dumps({"id": f"p{i:03d}", **make(rng)}) + "\n")
    print(f"wrote {N_PROMPTS} prompts to {OUT}")


if __name__ == "__main__":
    main()
