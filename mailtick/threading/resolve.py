"""Stage `thread`: which ticket does a mail belong to? A table of resolvers. Reads the database.

The resolvers run in order; the first that names an existing ticket wins and its
name is stored on the message as the threading rule. Nothing matched -> new ticket.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from mailtick.db import Ticket, execute, get_row, utcnow
from mailtick.mail import ParsedMail
from mailtick.numbers import is_valid
from mailtick.threading.subject import tagged_numbers


@dataclass(frozen=True)
class Match:
    ticket_id: int
    rule: str  # "in-reply-to" | "references" | "subject-tag"
    detail: str  # what matched: a Message-ID or a number


@dataclass(frozen=True)
class Decision:
    """Where the mail goes: an existing `ticket`, or a new one (None), possibly linked
    to an old closed ticket (`link_to`). `reopen` asks to reopen the ticket."""

    ticket: Ticket | None
    rule: str
    detail: str = ""
    reopen: bool = False
    link_to: int | None = None
    outsider_of: Ticket | None = None  # the ticket a non-participant tried to write into


class Lookup:
    """What the resolvers ask the database, each question asked at most once per mail."""

    def __init__(self, mail: ParsedMail, prefix: str) -> None:
        self.mail = mail
        self.prefix = prefix
        self._known: dict[str, int] | None = None

    def ticket_of(self, message_id: str) -> int | None:
        """The ticket holding a Message-ID: one query for the mail's own id and every id
        its In-Reply-To and References name."""
        if self._known is None:
            mail = self.mail
            wanted = list(
                dict.fromkeys((mail.message_id, *mail.in_reply_to, *mail.references[-100:]))
            )
            marks = ", ".join(["{p}"] * len(wanted))
            sql = f"SELECT message_id, ticket_id FROM message WHERE message_id IN ({marks})"
            rows = execute(sql, *wanted).fetchall()
            self._known = {str(mid): int(ticket_id) for mid, ticket_id in rows}
        return self._known.get(message_id)


Resolver = Callable[[Lookup], Match | None]


def by_in_reply_to(lookup: Lookup) -> Match | None:
    for mid in lookup.mail.in_reply_to:
        if (ticket_id := lookup.ticket_of(mid)) is not None:
            return Match(ticket_id, "in-reply-to", mid)
    return None


def by_references(lookup: Lookup) -> Match | None:
    for mid in reversed(lookup.mail.references):  # newest first
        if (ticket_id := lookup.ticket_of(mid)) is not None:
            return Match(ticket_id, "references", mid)
    return None


def by_subject_tag(lookup: Lookup) -> Match | None:
    for number in tagged_numbers(lookup.mail.subject, lookup.prefix):
        if not is_valid(number):
            continue  # a mistyped number fails its check digit and names no ticket
        row = Ticket.select(Ticket.id).where(Ticket.number == number).first()
        if row is not None:
            return Match(int(row.id), "subject-tag", number)
    return None


RESOLVERS: tuple[tuple[str, Resolver], ...] = (
    ("in-reply-to", by_in_reply_to),
    ("references", by_references),
    ("subject-tag", by_subject_tag),
)


def resolve(lookup: Lookup, reopen_days: int, now: datetime | None = None) -> Decision:
    """Run the resolver table and apply the closed-ticket rule. Call inside a transaction."""
    for _name, resolver in RESOLVERS:
        found = resolver(lookup)
        if found is not None:
            return _closed_ticket_rule(found, reopen_days, now or utcnow())
    return Decision(ticket=None, rule="new")


def _closed_ticket_rule(found: Match, reopen_days: int, now: datetime) -> Decision:
    ticket = get_row(Ticket, found.ticket_id)
    for _ in range(10):  # a merged ticket lives on in the one it was merged into
        if ticket.merged_into_id is None:
            break
        ticket = get_row(Ticket, ticket.merged_into_id)
    if ticket.status != "closed":
        return Decision(ticket, found.rule, found.detail)
    closed_at = ticket.closed_at or ticket.updated_at
    if now - closed_at <= timedelta(days=reopen_days):
        return Decision(ticket, found.rule, found.detail, reopen=True)
    return Decision(
        None, "new", f"{found.rule} {found.detail}: closed too long", link_to=found.ticket_id
    )
