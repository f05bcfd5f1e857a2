"""Ticket numbers and subject lines: what a customer types and reads."""

from __future__ import annotations

import pytest

from mailtick.numbers import FIRST_SEQUENCE, is_valid, ticket_number
from mailtick.threading.subject import normalise, tagged_numbers, with_tag

NUMBERS = [ticket_number(FIRST_SEQUENCE + n) for n in range(1, 3000)]


def test_numbers_are_short_unique_and_valid() -> None:
    assert NUMBERS[0] == "10019" and len(set(NUMBERS)) == len(NUMBERS)
    assert all(is_valid(n) and len(n) <= 6 for n in NUMBERS)


def test_a_single_mistyped_digit_never_names_another_ticket() -> None:
    for number in NUMBERS[::7]:
        for pos, digit in enumerate(number):
            for other in "0123456789":
                if other != digit:
                    assert not is_valid(number[:pos] + other + number[pos + 1 :]), (
                        number,
                        pos,
                        other,
                    )


def test_swapped_neighbours_never_name_another_ticket() -> None:
    for number in NUMBERS[::7]:
        for pos in range(len(number) - 1):
            a, b = number[pos], number[pos + 1]
            if a != b:
                assert not is_valid(number[:pos] + b + a + number[pos + 2 :]), (number, pos)


@pytest.mark.parametrize(
    ("subject", "title"),
    [
        ("AW: Re: [MT#10019] WG: Mails kommen nicht an", "Mails kommen nicht an"),
        ("RE[2]: Fwd: SV: [mt#10019] [MT#10019] Printer", "Printer"),
        ("Antw: VS: Rechnung 2026-11", "Rechnung 2026-11"),
        ("Re:", "(no subject)"),
        ("Reisekosten", "Reisekosten"),  # "Re" inside a word is not a prefix
        ("  Fwd :  spaced   out ", "spaced out"),
    ],
)
def test_subjects_are_normalised_for_display(subject: str, title: str) -> None:
    assert normalise(subject, "MT") == title


def test_tags_are_found_and_written_once() -> None:
    assert tagged_numbers("Re: [MT#10019] and [ MT # 10024 ] [XY#10033]", "MT") == [
        "10019",
        "10024",
    ]
    assert with_tag("AW: [MT#10019] Mails", "MT", "10019") == "[MT#10019] Mails"
