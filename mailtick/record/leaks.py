"""Stage `record`, for an agent's answer: nothing of ours leaks into a relay. Touches nothing.

Quote stripping (ingest/quotes.py) removes the quoted notification in the clients and
languages it knows. This is the check behind it, on the text about to be relayed:
whatever the quote format, the relay never carries one of our reply or note
addresses (`support+r-…`, `support+n-…`) or the agent's own address. The text is cut
before the first line that carries one, together with the quote header block that
line belongs to ("Van: … / Verzonden: … / Aan: …").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_HEADER_LINE = re.compile(r"^\s*[>|]*\s*[\w\u00c0-\u024f.\- ]{1,40}\s*:\s*\S")
_SEPARATOR = re.compile(r"^\s*[>|]*\s*(?:[-_=*]{3,}.*|.*[-_=*]{3,})\s*$")


@dataclass(frozen=True)
class Cut:
    text: str  # what may be relayed
    reason: str  # "" when nothing was cut; else what was found, for the ticket's event


def cut_leaks(text: str, support_addr: str, own: Sequence[str]) -> Cut:
    """`text` up to the first line carrying a token address of `support_addr` or one of
    the agent's `own` addresses (and its quote header block)."""
    local, _, domain = support_addr.lower().partition("@")
    token = re.compile(rf"{re.escape(local)}\+[rn]-[^\s@<>]*@{re.escape(domain)}", re.IGNORECASE)
    lines = text.splitlines()
    for n, line in enumerate(lines):
        lowered = line.lower()
        found = token.search(line) or next((a for a in own if a.lower() in lowered), None)
        if found:
            what = "a reply-token address" if isinstance(found, re.Match) else "the agent's address"
            start = _block_start(lines, n)
            kept = "\n".join(lines[:start]).rstrip()
            return Cut(
                kept + "\n" if kept else "", f"{what} in line {n + 1}, cut from line {start + 1}"
            )
    return Cut(text, "")


def _block_start(lines: Sequence[str], n: int) -> int:
    """The first line of the quote header block that line `n` is part of: header lines
    ("Aan: …") and a separator line ("-----Mensaje original-----") right above it."""
    start = n
    while start > 0 and (
        _HEADER_LINE.match(lines[start - 1]) or _SEPARATOR.match(lines[start - 1])
    ):
        start -= 1
        if _SEPARATOR.match(lines[start]):
            break
    return start
