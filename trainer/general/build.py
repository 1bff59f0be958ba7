"""Write the general-capability set (`trainer/general/general.jsonl`), seeded: rerunning gives the same bytes.

`python -m trainer.general.build` rewrites it. `build_train` makes the general training rows
(`sample:general-train`, written by `python -m trainer.samples`), disjoint from this set. Five categories, interleaved so that the first N
items of the file cover them evenly: instruction following, formatting, arithmetic, reading
comprehension and common knowledge. Every item has one exact short answer; `case_sensitive`
marks the ones whose letter case is the point (uppercase, snake_case...).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

OUT = Path(__file__).parent / "general.jsonl"
PER_CATEGORY = 60

Item = dict[str, object]
_WORDS = [
    "apple",
    "river",
    "candle",
    "garden",
    "pencil",
    "window",
    "rocket",
    "basket",
    "mirror",
    "forest",
    "ladder",
    "button",
    "orange",
    "planet",
    "violin",
    "bridge",
    "castle",
    "pepper",
    "silver",
    "tunnel",
]
_NAMES = ["Mara", "Tomas", "Aiko", "Lena", "Omar", "Priya", "Jonas", "Sofia", "Ravi", "Elena", "Noah", "Yuki"]
_CITIES = ["Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Dublin", "Porto", "Quito", "Tunis", "Riga"]
_JOBS = ["baker", "nurse", "pilot", "teacher", "plumber", "chemist", "farmer", "painter", "lawyer", "tailor"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_COLORS = ["red", "blue", "green", "yellow", "black", "white", "purple", "brown"]
_PETS = ["cat", "dog", "parrot", "rabbit", "turtle", "hamster"]

KNOWLEDGE = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of Canada?", "Ottawa"),
    ("What is the capital of Egypt?", "Cairo"),
    ("What is the capital of Kenya?", "Nairobi"),
    ("What is the capital of Norway?", "Oslo"),
    ("What is the capital of Peru?", "Lima"),
    ("What is the capital of Greece?", "Athens"),
    ("What is the capital of Russia?", "Moscow"),
    ("What is the capital of China?", "Beijing"),
    ("What is the capital of the United Kingdom?", "London"),
    ("What is the capital of Portugal?", "Lisbon"),
    ("What is the capital of Ireland?", "Dublin"),
    ("What is the capital of Austria?", "Vienna"),
    ("What is the capital of Poland?", "Warsaw"),
    ("What is the capital of Sweden?", "Stockholm"),
    ("What is the capital of Argentina?", "Buenos Aires"),
    ("What is the chemical symbol for gold?", "Au"),
    ("What is the chemical symbol for sodium?", "Na"),
    ("What is the chemical symbol for iron?", "Fe"),
    ("What is the chemical symbol for oxygen?", "O"),
    ("What is the chemical symbol for hydrogen?", "H"),
    ("What is the chemical symbol for carbon?", "C"),
    ("What is the chemical symbol for silver?", "Ag"),
    ("What is the chemical symbol for potassium?", "K"),
    ("How many days are in a week?", "7"),
    ("How many months are in a year?", "12"),
    ("How many hours are in a day?", "24"),
    ("How many minutes are in an hour?", "60"),
    ("How many legs does a spider have?", "8"),
    ("How many legs does an insect have?", "6"),
    ("How many continents are there on Earth?", "7"),
    ("How many sides does a triangle have?", "3"),
    ("How many sides does a hexagon have?", "6"),
    ("How many players are on a soccer team on the field?", "11"),
    ("At what temperature in degrees Celsius does water freeze at sea level?", "0"),
    ("At what temperature in degrees Celsius does water boil at sea level?", "100"),
    ("Which planet is closest to the Sun?", "Mercury"),
    ("Which planet is known as the Red Planet?", "Mars"),
    ("What is the largest planet in the Solar System?", "Jupiter"),
    ("Which planet do we live on?", "Earth"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("What gas do plants take in from the air to make food?", "carbon dioxide"),
    ("What is frozen water called?", "ice"),
    ("What color do you get by mixing blue and yellow?", "green"),
    ("What color do you get by mixing red and white?", "pink"),
    ("Which animal is known as the king of the jungle?", "lion"),
    ("What is the opposite of hot?", "cold"),
    ("What is the opposite of up?", "down"),
    ("What is the plural of mouse?", "mice"),
    ("What is the plural of child?", "children"),
    ("What is the past tense of go?", "went"),
    ("What is the past tense of eat?", "ate"),
    ("Which language is mainly spoken in Brazil?", "Portuguese"),
    ("Which language is mainly spoken in Mexico?", "Spanish"),
    ("Who wrote Romeo and Juliet?", "William Shakespeare"),
    ("What is the currency of Japan?", "yen"),
]


def instruction(rng: random.Random, i: int) -> Item:
    w = rng.choice(_WORDS)
    a, b = rng.sample(range(2, 99), 2)
    sentence = " ".join(rng.sample(_WORDS, rng.randint(3, 6)))
    kinds: list[tuple[str, str, bool]] = [
        (f"Reply with only the word {w}.", w, False),
        (f"Reply with the word {w} in uppercase letters and nothing else.", w.upper(), True),
        (
            f"Repeat the word {w} three times, separated by single spaces. Reply with nothing else.",
            f"{w} {w} {w}",
            False,
        ),
        (f"Answer only yes or no: is {a} larger than {b}?", "yes" if a > b else "no", False),
        (f"What is the first letter of the word {w}? Reply with the letter only.", w[0], False),
        (f"Reply with the last word of this list only: {sentence}", sentence.split()[-1], False),
        (
            f"How many words are in this list: {sentence}? Reply with the number only.",
            str(len(sentence.split())),
            False,
        ),
    ]
    prompt, answer, case = kinds[i % len(kinds)]
    return {"prompt": prompt, "answer": answer, "case_sensitive": case}


def formatting(rng: random.Random, i: int) -> Item:
    y, m, d = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
    words = rng.sample(_WORDS, 3)
    phrase = " ".join(words)
    n = rng.randint(1000, 999999)
    kinds: list[tuple[str, str, bool]] = [
        (
            f"Write the date {y}-{m:02d}-{d:02d} as DD/MM/YYYY. Reply with the date only.",
            f"{d:02d}/{m:02d}/{y}",
            False,
        ),
        (f"Write '{phrase}' in uppercase. Reply with the result only.", phrase.upper(), True),
        (f"Write '{phrase}' in snake_case. Reply with the result only.", "_".join(words), True),
        (
            f"Sort these words alphabetically: {', '.join(words)}. Reply with the sorted words separated by commas.",
            ", ".join(sorted(words)),
            False,
        ),
        (
            f"Write the number {n} with commas as thousands separators. Reply with the number only.",
            f"{n:,}",
            False,
        ),
        (
            f'Reply with a JSON object whose key "item" has the value "{words[0]}", and nothing else.',
            json.dumps({"item": words[0]}),
            True,
        ),
        (f"Join these words with hyphens: {phrase}. Reply with the result only.", "-".join(words), False),
    ]
    prompt, answer, case = kinds[i % len(kinds)]
    return {"prompt": prompt, "answer": answer, "case_sensitive": case}


def arithmetic(rng: random.Random, i: int) -> Item:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = i % 4
    if op == 0:
        text, value = f"{a} + {b}", a + b
    elif op == 1:
        a, b = max(a, b), min(a, b)
        text, value = f"{a} - {b}", a - b
    elif op == 2:
        b = rng.randint(2, 12)
        text, value = f"{a} * {b}", a * b
    else:
        b = rng.randint(2, 12)
        text, value = f"{a * b} / {b}", a
    return {
        "prompt": f"What is {text}? Reply with the number only.",
        "answer": str(value),
        "case_sensitive": False,
    }


def reading(rng: random.Random, i: int) -> Item:
    name, friend = rng.sample(_NAMES, 2)
    city, job, day = rng.choice(_CITIES), rng.choice(_JOBS), rng.choice(_DAYS)
    color, pet = rng.choice(_COLORS), rng.choice(_PETS)
    boxes = rng.randint(2, 9)
    text = (
        f"{name} lives in {city} and works as a {job}. Every {day}, {name} visits {friend}. "
        f"{name} has a {color} {pet} and keeps {boxes} boxes of books at home."
    )
    questions = [
        (f"Where does {name} live?", city),
        (f"What is {name}'s job?", job),
        (f"On which day does {name} visit {friend}?", day),
        (f"Whom does {name} visit every {day}?", friend),
        (f"What animal does {name} have?", pet),
        (f"What color is {name}'s {pet}?", color),
        (f"How many boxes of books does {name} keep at home?", str(boxes)),
    ]
    question, answer = questions[i % len(questions)]
    prompt = f"Read the text and answer with one word.\n\nText: {text}\n\nQuestion: {question}"
    return {"prompt": prompt, "answer": answer, "case_sensitive": False}


def knowledge(rng: random.Random, i: int) -> Item:
    question, answer = KNOWLEDGE[i % len(KNOWLEDGE)]
    return {"prompt": f"{question} Reply with the answer only.", "answer": answer, "case_sensitive": False}


CATEGORIES: dict[str, Callable[[random.Random, int], Item]] = {
    "instruction": instruction,
    "formatting": formatting,
    "arithmetic": arithmetic,
    "reading": reading,
    "knowledge": knowledge,
}


def build(per_category: int = PER_CATEGORY, seed: int = 34) -> list[Item]:
    rng = random.Random(seed)
    items: list[Item] = []
    seen: set[object] = set()
    for i in range(per_category):
        for name, make in CATEGORIES.items():
            item = make(rng, i)
            while item["prompt"] in seen and name != "knowledge":  # draw again: every prompt once
                item = make(rng, i)
            seen.add(item["prompt"])
            items.append({"id": f"{name}-{i:03d}", "category": name, **item})
    return items


TRAIN_PER_CATEGORY = 100
TRAIN_SEED = 3434
TRAIN_TRIES = 50
"""Draws per training item before a category gives up on a prompt not yet used (the word lists are small)."""


def prompt_key(prompt: str) -> str:
    """A prompt as compared for disjointness: spaces collapsed, letter case folded."""
    return " ".join(prompt.split()).casefold()


def build_train(per_category: int = TRAIN_PER_CATEGORY, seed: int = TRAIN_SEED) -> list[dict[str, str]]:
    """General training rows (prompt/completion, `sample:general-train`) from the same generators
    with another seed, disjoint from the evaluation set: every prompt of `build()` is left out
    (normalized by `prompt_key`), so is common knowledge (all of its questions are in the set)."""
    rng = random.Random(seed)
    used = {prompt_key(str(item["prompt"])) for item in build()}
    rows: list[dict[str, str]] = []
    for i in range(per_category):
        for name, make in CATEGORIES.items():
            if name == "knowledge":
                continue
            for _ in range(TRAIN_TRIES):
                item = make(rng, i)
                key = prompt_key(str(item["prompt"]))
                if key not in used:
                    used.add(key)
                    rows.append({"prompt": str(item["prompt"]), "completion": str(item["answer"])})
                    break
    return rows


if __name__ == "__main__":
    OUT.write_text("".join(json.dumps(item) + "\n" for item in build()))
    print(f"wrote {OUT}")
