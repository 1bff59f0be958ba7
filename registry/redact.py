"""Personal-data patterns shared by the payload log (serving) and the training-data scan (trainer).

The same two kinds the payload redactor masks: e-mail addresses, and numbers of 4+ digits
(phone, card, account numbers). `trainer` and `serving` never import each other, so the
patterns live here, in the package both depend on.
"""

from __future__ import annotations

import re
from collections import Counter

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
NUMBER = re.compile(r"\+?\d[\d ().-]*\d")
MIN_DIGITS = 4
"""A number is personal data from this many digits on (an order quantity of 12 is not)."""
MASKS = {"email": "[EMAIL]", "number": "[NUMBER]"}
"""What each kind is replaced with."""


def _long(match: re.Match[str]) -> bool:
    return sum(ch.isdigit() for ch in match.group()) >= MIN_DIGITS


def redact(text: str) -> str:
    """E-mail addresses -> `[EMAIL]`, numbers of 4+ digits -> `[NUMBER]`."""
    text = EMAIL.sub(MASKS["email"], text)
    return NUMBER.sub(lambda m: MASKS["number"] if _long(m) else m.group(), text)


def count_pii(text: str) -> Counter[str]:
    """How many matches of each kind `redact` would mask in `text` (e-mails first, as it does)."""
    counts: Counter[str] = Counter()
    counts["email"] = len(EMAIL.findall(text))
    rest = EMAIL.sub(" ", text)
    counts["number"] = sum(1 for m in NUMBER.finditer(rest) if _long(m))
    return +counts
