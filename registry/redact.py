"""Personal-data patterns shared by the payload log (serving) and the training-data scan (trainer).

Two kinds: e-mail addresses, and numbers of 4 to 20 digits (phone, card, account numbers).
`trainer` and `serving` never import each other, so the one implementation lives here, in the
package both depend on (`serving/payloads.py` uses `redact` as its default hook).

Linear in the text: every repetition is bounded and an address is looked for only around each `@`
(the stdlib's backtracking `re` would otherwise restart a `[...]+@` match at every character of a
long run: 15,000 `-` took 0.7 s). Written with `re` rather than a linear-time engine (google-re2)
to keep Python's Unicode `\\w` and need no native dependency.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

DOMAIN = re.compile(r"@([\w-]{1,63}(?:\.[\w-]{1,63}){1,8})")
"""An e-mail address from its `@` on: a domain of at most 8 labels of at most 63 characters."""
LOCAL_REVERSED = re.compile(r"[\w.+-]{1,64}")
"""An e-mail address's local part (at most 64 characters), matched on the reversed text before `@`."""
NUMBER = re.compile(r"\+?\d(?:[ ().-]{0,3}\d){3,19}")
"""A phone, card or account number: 4 to 20 digits, at most 3 separators between two of them."""
MASKS = {"email": "[EMAIL]", "number": "[NUMBER]"}
"""What each kind is replaced with."""


def _emails(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each e-mail address, left to right, not overlapping."""
    done = 0
    for m in DOMAIN.finditer(text):
        at = m.start()
        if at < done:
            continue
        local = LOCAL_REVERSED.match(text[max(done, at - 64) : at][::-1])
        if local is None:
            continue
        yield at - local.end(), m.end()
        done = m.end()


def _mask_emails(text: str, mask: str) -> str:
    out: list[str] = []
    done = 0
    for start, end in _emails(text):
        out += [text[done:start], mask]
        done = end
    return "".join([*out, text[done:]])


def redact(text: str) -> str:
    """E-mail addresses -> `[EMAIL]`, numbers of 4+ digits -> `[NUMBER]`."""
    return NUMBER.sub(MASKS["number"], _mask_emails(text, MASKS["email"]))


def count_pii(text: str) -> Counter[str]:
    """How many matches of each kind `redact` would mask in `text` (e-mails first, as it does)."""
    counts: Counter[str] = Counter()
    counts["email"] = sum(1 for _ in _emails(text))
    counts["number"] = len(NUMBER.findall(_mask_emails(text, " ")))
    return +counts
