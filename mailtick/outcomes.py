"""Outcome exceptions of every stage; pipeline.py maps them to retry, quarantine or ignore."""

from __future__ import annotations


class Outcome(Exception):
    """A stage's decision about a mail, with a reason fit for one log line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Ignored(Outcome):
    """Nothing to record (for example a mail we already have); the mail is acked."""


class Rejected(Outcome):
    """The mail cannot be processed, now or later: it is quarantined with this reason."""


class Transient(Outcome):
    """Try again later (database busy, server gone); the mail stays where it is."""
