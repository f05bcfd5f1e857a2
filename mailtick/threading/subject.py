"""Subject lines: find our ticket tags, strip reply prefixes for display. Pure, touches nothing."""

from __future__ import annotations

import re
from functools import lru_cache

# Reply and forward prefixes of common clients: English, German (AW, WG, Antw),
# Scandinavian (SV, VS), Dutch (Antw, Doorst), with counters like "Re[2]:" or "Re(2):".
_PREFIX = re.compile(
    r"^\s*(?:re|aw|wg|fwd?|sv|vs|antw|doorst|tr|rif|r)\s*(?:\[\d+\]|\(\d+\))?\s*:\s*",
    re.IGNORECASE,
)
_SPACES = re.compile(r"\s+")


@lru_cache(maxsize=16)
def _tag_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"\[\s*{re.escape(prefix)}\s*#\s*(\d{{2,12}})\s*\]", re.IGNORECASE)


def tag(prefix: str, number: str) -> str:
    return f"[{prefix}#{number}]"


def tagged_numbers(subject: str, prefix: str) -> list[str]:
    """Every ticket number tagged in the subject, in order of appearance."""
    return _tag_pattern(prefix).findall(subject)


def strip_tags(subject: str, prefix: str) -> str:
    return _tag_pattern(prefix).sub(" ", subject)


def normalise(subject: str, prefix: str) -> str:
    """The subject as a ticket title: no reply prefixes, no tags, single spaces.

    "AW: Re: [MT#10009] WG: Mails kommen nicht an" -> "Mails kommen nicht an"
    """
    text = _SPACES.sub(" ", strip_tags(subject, prefix)).strip()
    while True:
        shorter = _PREFIX.sub("", text, count=1).strip()
        if shorter == text:
            return text or "(no subject)"
        text = shorter


def with_tag(subject: str, prefix: str, number: str) -> str:
    """A subject for an outgoing mail: the title with exactly one tag in front."""
    return f"{tag(prefix, number)} {normalise(subject, prefix)}"
