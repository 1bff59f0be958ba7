"""Sample datasets the project writes itself (seeded, so regenerating gives the same bytes).

- `support-tickets` (prompt/completion): a customer message becomes one ticket line
  `Ticket #<id> | <category> | <summary>`. A fixed template with copied values: a LoRA on
  SmolLM2-135M learns it in a few dozen steps, and exact match shows it plainly.
- `support-prefs` (DPO pairs): support-tickets prompts whose chosen answer adds a polite closing
  line to the ticket line and whose rejected answer does not (`polite_closing` measures it).
- `contact-json` (chat messages): a message becomes a fixed JSON object
  `{"name": ..., "city": ..., "intent": ...}`; scored per field as well as exactly.
- `general-train` (prompt/completion): general instruction following, formatting, arithmetic and
  reading questions with exact answers, to mix into task training (`data.mix`) against forgetting;
  no prompt of the general-capability evaluation set (trainer/general/) is among them.

Run `python -m trainer.samples` to rewrite the shipped files under trainer/samples/.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.errors import TrainerError

SAMPLES_DIR = Path(__file__).parent / "samples"

_ISSUES = {
    "billing": [
        ("I was charged twice for my {p} subscription", "double charge"),
        ("my card got billed for {p} after I cancelled", "charged after cancel"),
        ("the invoice for {p} shows the wrong amount", "wrong invoice amount"),
        ("I need a refund for {p}, it was bought by mistake", "refund request"),
    ],
    "shipping": [
        ("my {p} has not arrived and it is two weeks late", "late delivery"),
        ("the {p} arrived damaged, the box was crushed", "damaged on arrival"),
        ("I got someone else's parcel instead of my {p}", "wrong parcel"),
        ("tracking for my {p} has not updated in days", "tracking stuck"),
    ],
    "account": [
        ("I cannot log in to my account since I ordered the {p}", "cannot log in"),
        ("the password reset email never comes, I need to check my {p} order", "no reset email"),
        ("please delete my account, I no longer use the {p}", "delete account"),
        ("someone changed the email on my account, my {p} order is there", "email changed"),
    ],
    "technical": [
        ("the app crashes whenever I open the {p} page", "app crash"),
        ("the {p} will not connect to wifi after the update", "wifi connection"),
        ("my {p} shows error 504 when syncing", "sync error"),
        ("the {p} firmware update fails halfway", "update fails"),
    ],
}
_PRODUCTS = [
    "Pro plan",
    "Basic plan",
    "Family plan",
    "headphones",
    "smart watch",
    "coffee grinder",
    "desk lamp",
    "router",
    "camera",
    "keyboard",
    "e-reader",
    "speaker",
    "backpack",
    "blender",
    "monitor",
    "drone",
    "thermostat",
    "tablet",
    "printer",
    "scooter",
]
_OPENERS = ["Hi,", "Hello,", "Hey there,", "Good morning,", "", "Help!", "Dear support,", "Hi team,"]
_ID_PHRASES = ["Order {i}.", "My order number is {i}.", "(order #{i})", "Ref: {i}.", "Order id {i}."]
_CLOSERS = ["Thanks.", "Please help.", "", "Regards, a customer.", "Can you fix this?", "Thank you!"]

_NAMES = [
    "Alice Martin",
    "Bob Chen",
    "Carla Diaz",
    "David Kim",
    "Emma Novak",
    "Farid Haddad",
    "Grace Liu",
    "Hugo Rossi",
    "Ines Costa",
    "Jonas Berg",
    "Keiko Sato",
    "Liam Walsh",
    "Maya Singh",
    "Noah Fischer",
    "Olga Petrova",
    "Pablo Ruiz",
    "Quinn Taylor",
    "Rosa Moreno",
    "Sam Okafor",
    "Tara Byrne",
    "Umar Malik",
    "Vera Lind",
    "Will Turner",
    "Xia Wang",
    "Yusuf Demir",
    "Zoe Laurent",
]
_CITIES = [
    "Paris",
    "Berlin",
    "Madrid",
    "Lisbon",
    "Dublin",
    "Oslo",
    "Vienna",
    "Prague",
    "Warsaw",
    "Rome",
    "Athens",
    "Helsinki",
    "Zurich",
    "Brussels",
    "Amsterdam",
    "Lyon",
    "Porto",
    "Krakow",
    "Milan",
    "Seville",
]
_INTENTS = {
    "book_demo": ["I would like to book a demo", "could we schedule a product demo", "can I see a demo"],
    "pricing": [
        "what does the enterprise tier cost",
        "please send me your pricing",
        "how much is it per seat",
    ],
    "cancel": ["I want to cancel my plan", "please stop my subscription", "cancel my account please"],
    "complaint": [
        "your service was down all morning",
        "I am unhappy with the last update",
        "support never replied",
    ],
}
TICKET_INSTRUCTION = "Turn this customer message into a ticket line."
POLITE_CLOSINGS = [
    "Thank you for reaching out, we are on it.",
    "Thanks for your patience, we will update you soon.",
    "We are sorry for the trouble and will fix it quickly.",
]
_CONTACT_SYSTEM = 'Extract the contact as JSON with keys "name", "city", "intent". Reply with JSON only.'


def _ticket(rng: random.Random) -> tuple[str, str]:
    """One customer message and its ticket line."""
    category = rng.choice(sorted(_ISSUES))
    text, summary = rng.choice(_ISSUES[category])
    product = rng.choice(_PRODUCTS)
    ticket = rng.randint(10000, 99999)
    parts = [rng.choice(_OPENERS), text.format(p=product) + ".", rng.choice(_ID_PHRASES).format(i=ticket)]
    parts.append(rng.choice(_CLOSERS))
    message = " ".join(p for p in parts if p)
    return message, f"Ticket #{ticket} | {category} | {summary} ({product})"


def support_tickets(n: int = 420, seed: int = 7) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    while len(rows) < n:
        message, line = _ticket(rng)
        if message in seen:
            continue
        seen.add(message)
        rows.append({"prompt": f"{TICKET_INSTRUCTION}\n\n{message}", "completion": line})
    return rows


def support_prefs(n: int = 400, seed: int = 23) -> list[dict[str, object]]:
    """Preference pairs on support-tickets prompts (another seed): both answers carry the right
    ticket line; the chosen one adds a polite closing line (`polite_closing`), the rejected one not."""
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    seen: set[str] = set()
    while len(rows) < n:
        message, line = _ticket(rng)
        if message in seen:
            continue
        seen.add(message)
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"{TICKET_INSTRUCTION}\n\n{message}"}],
                "chosen": [{"role": "assistant", "content": f"{line}\n{rng.choice(POLITE_CLOSINGS)}"}],
                "rejected": [{"role": "assistant", "content": line}],
            }
        )
    return rows


def polite_closing(answer: str) -> bool:
    """The property `support-prefs` prefers: a line after the ticket line that thanks or apologizes."""
    lines = [x.strip().lower() for x in answer.strip().splitlines()[1:] if x.strip()]
    return any(x.startswith(("thank", "we are sorry", "sorry")) for x in lines)


def contact_json(n: int = 360, seed: int = 11) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    seen: set[str] = set()
    while len(rows) < n:
        name, city = rng.choice(_NAMES), rng.choice(_CITIES)
        intent = rng.choice(sorted(_INTENTS))
        ask = rng.choice(_INTENTS[intent])
        form = rng.randrange(3)
        if form == 0:
            msg = f"Hi, this is {name} from {city}. {ask.capitalize()}."
        elif form == 1:
            msg = f"{ask.capitalize()}. - {name}, {city}"
        else:
            msg = f"Hello from {city}! My name is {name} and {ask}."
        if msg in seen:
            continue
        seen.add(msg)
        answer = json.dumps({"name": name, "city": city, "intent": intent})
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": _CONTACT_SYSTEM},
                    {"role": "user", "content": msg},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return rows


def general_train() -> list[dict[str, str]]:
    """General rows to mix into task training (`data.mix`), disjoint from the general-capability
    evaluation set (trainer/general/build.py)."""
    from trainer.general.build import build_train

    return build_train()


SAMPLES: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "support-tickets": support_tickets,
    "contact-json": contact_json,
    "general-train": general_train,
}
PREFERENCE_SAMPLES: dict[str, Callable[[], list[dict[str, Any]]]] = {"support-prefs": support_prefs}
"""Preference pairs (`training.objective=dpo`), not SFT rows."""
DEFAULT_SAMPLE = "support-tickets"


def sample_path(name: str) -> Path:
    return SAMPLES_DIR / f"{name}.jsonl"


SCHEMAS = ("contact-json",)
"""Samples whose answers follow a JSON schema, shipped as `<name>.schema.json`."""


def schema_path(spec: str) -> Path:
    """The shipped schema file of `sample:<name>`; TrainerError for a sample without one."""
    name = spec.split(":", 1)[1]
    if name not in SCHEMAS:
        raise TrainerError(
            f"no shipped schema for {spec!r}; known: {', '.join(f'sample:{s}' for s in SCHEMAS)}"
        )
    return SAMPLES_DIR / f"{name}.schema.json"


def write_samples(out_dir: Path = SAMPLES_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, make in {**SAMPLES, **PREFERENCE_SAMPLES}.items():
        path = out_dir / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in make()))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_samples():
        print(p)
