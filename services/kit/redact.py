"""What must never be stored or logged in full: card numbers (PANs) and e-mail addresses.

- `find_card_numbers(text)`: 13-19 digits that pass the Luhn check, either contiguous or in groups of
  4-6 digits split by single spaces or dashes (`4242 4242 4242 4242`, `3782-822463-10005`). Dates and
  flight ids (`2027-03-15`, `TM101-20270315`) do not match: their groups are too short or too few digits.
- `mask_email`: `ada@example.com` -> `a***@example.com` (the domain stays: it says which provider failed).
- `log_redactor`: a structlog processor that masks both in every value of every log line.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

# Contiguous runs of digits, or digit groups of 4-6 joined by one space or dash; never part of a longer
# run of digits (the lookarounds), so a 25-digit number is not read as a card number inside it.
_CANDIDATE = re.compile(r"(?<![0-9])(?:[0-9]{13,19}|[0-9]{4,6}(?:[ -][0-9]{4,6}){2,4})(?![0-9])")
EMAIL = re.compile(r"(?<![\w.+-])([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")
MASKED_CARD = "[card number removed]"


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def find_card_numbers(text: str) -> list[str]:
    """Every substring of `text` that looks like a payment card number (13-19 Luhn-valid digits)."""
    found = []
    for match in _CANDIDATE.finditer(text):
        digits = re.sub(r"[ -]", "", match.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            found.append(match.group())
    return found


def looks_like_card_number(text: str) -> bool:
    return bool(find_card_numbers(text))


def mask_email(text: str) -> str:
    """Every e-mail address in `text` with its local part cut to one letter: a***@example.com."""
    return EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)


def redact(text: str) -> str:
    for number in find_card_numbers(text):
        text = text.replace(number, MASKED_CARD)
    return mask_email(text) if "@" in text else text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    return value


def log_redactor(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: no card number and no whole e-mail address reaches a log line."""
    for key, value in event.items():
        if key != "_record" and key != "_from_structlog":
            event[key] = _redact_value(value)
    return event
