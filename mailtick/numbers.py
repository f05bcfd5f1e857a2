"""Ticket numbers: a sequence number plus a Damm check digit. Pure functions, touches nothing.

The Damm algorithm detects every single-digit error and every swap of two adjacent
digits, so a number misread on the phone or mistyped in a subject never names
another ticket: it fails the check instead.
"""

from __future__ import annotations

_DAMM = (
    (0, 3, 1, 7, 5, 9, 8, 6, 4, 2),
    (7, 0, 9, 2, 1, 5, 4, 8, 6, 3),
    (4, 2, 0, 6, 8, 7, 1, 3, 5, 9),
    (1, 7, 5, 0, 9, 8, 3, 4, 2, 6),
    (6, 1, 2, 3, 0, 4, 5, 9, 7, 8),
    (3, 6, 7, 4, 2, 0, 9, 5, 8, 1),
    (5, 8, 6, 9, 7, 2, 0, 1, 3, 4),
    (8, 9, 4, 5, 3, 6, 2, 0, 1, 7),
    (9, 4, 3, 8, 6, 1, 7, 2, 0, 5),
    (2, 5, 8, 1, 4, 3, 6, 7, 9, 0),
)

FIRST_SEQUENCE = 1000  # numbers start at five digits: 10009, 10013, ...


def damm_digit(digits: str) -> int:
    interim = 0
    for ch in digits:
        interim = _DAMM[interim][int(ch)]
    return interim


def ticket_number(sequence: int) -> str:
    """The printable number for the n-th ticket: its digits followed by the check digit."""
    body = str(sequence)
    return f"{body}{damm_digit(body)}"


def is_valid(number: str) -> bool:
    """True when `number` is all digits and its check digit matches."""
    return len(number) >= 2 and number.isascii() and number.isdigit() and damm_digit(number) == 0
