"""The demo pool: small, deterministic instruction shards in four native formats.

Generated from templates (no downloads) so ``mig-assets demo`` runs offline. The shards cover a
dozen skills, share some exact duplicates across files, and carry a few deliberately bad records
so the quarantine shows up in the demo too. ``write_demo_pool(folder)`` is byte-deterministic.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# skill -> (InsTag-style tags, instruction templates, response template); {x} is filled per sample
SKILLS: dict[str, tuple[list[str], list[str], str]] = {
    "python": (
        ["python programming", "code generation", "function implementation"],
        ["Write a Python function that {x}.", "How do I {x} in Python?", "Fix my Python code so that it {x}."],
        "Here is a Python solution that {x}:\n\n```python\ndef solve(data):\n    return sorted(data)\n```\nIt runs in O(n log n).",
    ),
    "sql": (
        ["sql", "database query", "data retrieval"],
        ["Write a SQL query that {x}.", "Explain how to {x} with SQL."],
        "Use this query to {x}:\n\n```sql\nSELECT * FROM orders ORDER BY created_at DESC;\n```",
    ),
    "algebra": (
        ["mathematics", "algebra", "problem solve"],
        ["Solve for x: {x}.", "Show step by step how to simplify {x}."],
        "Step 1: isolate the variable in {x}. Step 2: divide both sides. The answer follows directly.",
    ),
    "geometry": (
        ["mathematics", "geometry", "calculation"],
        ["What is the area of {x}?", "Prove a property of {x}."],
        "For {x}, apply the standard formula and substitute the given lengths to get the result.",
    ),
    "writing": (
        ["creative writing", "storytelling", "poetry"],
        ["Write a short poem about {x}.", "Write a story opening that features {x}."],
        "A few lines about {x}:\n\nSoft light falls, the quiet hours pass,\nand memory settles like dew on glass.",
    ),
    "email": (
        ["email writing", "professional communication", "formal tone"],
        ["Draft a polite email to {x}.", "Rewrite this email to {x} so it sounds more professional."],
        "Subject: Follow-up\n\nDear team,\n\nI am writing to {x}. Thank you for your time.\n\nBest regards",
    ),
    "history": (
        ["history", "information retrieval", "historical event"],
        ["Summarize the causes of {x}.", "What were the consequences of {x}?"],
        "The main causes of {x} were economic pressure, political conflict and social change.",
    ),
    "cooking": (
        ["cooking", "recipe", "food"],
        ["Give me a recipe for {x}.", "How long should I cook {x}?"],
        "For {x}: prepare the ingredients, heat the pan, cook for 12 minutes and season to taste.",
    ),
    "translation": (
        ["translation", "language", "french"],
        ["Translate into French: {x}.", "How do you say '{x}' in French?"],
        "In French: « {x} ». Note the formal register.",
    ),
    "finance": (
        ["finance", "personal finance", "advice"],
        ["How should I {x}?", "Explain the risks of trying to {x}."],
        "To {x}, start with a budget, keep an emergency fund and diversify your investments.",
    ),
    "physics": (
        ["physic", "science explanation", "concept explanation"],
        ["Explain {x} to a high school student.", "Why does {x} happen?"],
        "{x} happens because energy is conserved while the system changes state.",
    ),
    "health": (
        ["health", "fitness", "advice"],
        ["Suggest a weekly plan to {x}.", "What are safe ways to {x}?"],
        "A safe plan to {x}: three sessions a week, enough sleep, and gradual progress.",
    ),
}
FILLERS = {
    "python": [
        "reverses a linked list",
        "parses a CSV file",
        "counts word frequencies",
        "merges two sorted lists",
        "validates an email address",
        "flattens a nested list",
    ],
    "sql": ["finds the top 5 customers by revenue", "counts orders per month", "joins users with their last login", "deletes duplicate rows"],
    "algebra": ["3x + 7 = 22", "2(x - 4) = 10", "x^2 - 9 = 0", "5x - 3 = 2x + 9"],
    "geometry": ["a circle of radius 4", "a right triangle with legs 3 and 4", "a regular hexagon of side 2", "an isosceles trapezoid"],
    "writing": ["the sea at night", "an old library", "the first snow", "a lighthouse keeper", "a city waking up"],
    "email": ["my manager asking for a deadline extension", "a client about a delayed shipment", "a colleague to schedule a review"],
    "history": ["the French Revolution", "the fall of the Roman Empire", "the Industrial Revolution", "the Cold War"],
    "cooking": ["vegetable curry", "banana bread", "a mushroom risotto", "chicken soup"],
    "translation": ["Where is the train station", "I would like a coffee", "The meeting starts at noon"],
    "finance": ["save for retirement", "pay off credit card debt", "invest in index funds"],
    "physics": ["a rainbow", "static electricity", "the tides", "a pendulum's period"],
    "health": ["improve sleep", "start running", "build core strength"],
}


# the demo's target domain (as MT-Bench categories): coding and math
TARGET_CATEGORIES = {"python": "coding", "sql": "coding", "algebra": "math", "geometry": "math"}


def _samples(rng: random.Random, n: int, skills: list[str] | None = None) -> list[dict]:
    skills = sorted(skills or SKILLS)
    samples = []
    for _ in range(n):
        skill = rng.choice(skills)
        tags, instructions, response = SKILLS[skill]
        filler = rng.choice(FILLERS[skill])
        instruction = rng.choice(instructions).format(x=filler)
        detail = rng.choice(["", " Keep it short.", " Please explain your reasoning.", " Use simple words.", " Give two options."])
        audience = rng.choice(["", " I am a beginner.", " Assume I am an expert.", " This is for a school project."])
        if rng.random() < 0.6:
            detail += f" Answer in at most {rng.randint(3, 30) * 10} words."
        quality = [round(rng.uniform(2.0, 5.5), 4)]
        samples.append(
            {
                "skill": skill,
                "instruction": instruction + detail + audience,
                "response": response.format(x=filler),
                "tags": rng.sample(tags, k=rng.randint(1, len(tags))),
                "quality": quality,
                "complexity": [round(rng.uniform(1.0, 5.0), 4)],
            }
        )
    return samples


def write_demo_pool(folder: Path, n_per_shard: int = 100, seed: int = 0) -> list[Path]:
    """Write four demo shards into ``folder`` and return their paths."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    shards = [_samples(rng, n_per_shard) for _ in range(4)]
    shards[1][:5] = shards[0][:5]  # exact duplicates across shards: kept once
    paths = [
        _write_sharegpt(folder / "chat_sharegpt.jsonl", shards[0]),
        _write_alpaca(folder / "tasks_alpaca.json", shards[1]),
        _write_openai(folder / "chat_openai.parquet", shards[2]),
        _write_mig(folder / "annotated_mig.jsonl", shards[3]),
    ]
    return paths


def write_demo_target(folder: Path, n: int = 24, seed: int = 1) -> Path:
    """Write the demo's target set (coding and math questions, MIG format with InsTag-style tags and
    an MT-Bench-like ``category``) into ``folder``; aligned selections steer towards it."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = _samples(random.Random(seed), n, sorted(TARGET_CATEGORIES))
    for s in samples:
        s["category"] = TARGET_CATEGORIES[s["skill"]]
    return _write_mig(folder / "demo_target.jsonl", samples)


def _write_sharegpt(path: Path, samples: list[dict]) -> Path:
    lines = [
        json.dumps({"id": f"sg-{i}", "conversations": [{"from": "human", "value": s["instruction"]}, {"from": "gpt", "value": s["response"]}]})
        for i, s in enumerate(samples)
    ]
    # bad records, kept in quarantine with a reason: unknown role, empty conversation, broken JSON
    lines.insert(10, json.dumps({"id": "sg-bad-role", "conversations": [{"from": "narrator", "value": "Once upon a time"}]}))
    lines.insert(20, json.dumps({"id": "sg-empty", "conversations": []}))
    lines.insert(30, '{"id": "sg-truncated", "conversations": [{"from": "human", "value": "unterminated')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _write_alpaca(path: Path, samples: list[dict]) -> Path:
    records = [{"instruction": s["instruction"], "input": "", "output": s["response"], "dataset": s["skill"]} for s in samples]
    path.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _write_openai(path: Path, samples: list[dict]) -> Path:
    rows = [
        {"messages": [{"role": "user", "content": s["instruction"]}, {"role": "assistant", "content": s["response"]}], "source": s["skill"]} for s in samples
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _write_mig(path: Path, samples: list[dict]) -> Path:
    lines = [
        json.dumps(
            {
                "_id": f"{i:024x}",
                "dialogs": [{"role": "user", "content": s["instruction"]}, {"role": "assistant", "content": s["response"]}],
                "source": [s["skill"]],
                **({"category": s["category"]} if "category" in s else {}),
                "annotation": {
                    "instag": {"content": s["tags"], "versions": [100] * len(s["tags"])},
                    "deita": {"quality_scores": s["quality"], "complexity_scores": s["complexity"]},
                },
            }
        )
        for i, s in enumerate(samples)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
