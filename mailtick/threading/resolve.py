"""Stage `thread`: which ticket does a mail belong to? A table of resolvers. Reads the database.

The resolvers run in order; the first that names an existing ticket wins and its
name is stored on the message as the threading rule. Nothing matched -> new ticket.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from mailtick.db import Message, Ticket, utcnow
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
    """Where the mail goes: an existing ticket (`ticket_id`) or a new one (None),
    possibly linked to an old closed ticket (`link_to`). `reopen` asks to reopen."""

    ticket_id: int | None
    rule: str
    detail: str = ""
    reopen: bool = False
    link_to: int | None = None


Resolver = Callable[[ParsedMail, str], Match | None]


def _ticket_of_message_id(message_id: str) -> int | None:
    row = Message.select(Message.ticket).where(Message.message_id == message_id).first()
    return int(row.ticket_id) if row else None


def by_in_reply_to(mail: ParsedMail, prefix: str) -> Match | None:
    for mid in mail.in_reply_to:
        ticket_id = _ticket_of_message_id(mid)
        if ticket_id is not None:
            return Match(ticket_id, "in-reply-to", mid)
    return None


def by_references(mail: ParsedMail, prefix: str) -> Match | None:
    if not mail.references:
        return None
    newest_first = list(reversed(mail.references))
    rows = {
        row.message_id: int(row.ticket_id)
        for row in Message.select(Message.message_id, Message.ticket).where(
            Message.message_id.in_(newest_first[:100])
        )
    }
    for mid in newest_first:
        if mid in rows:
            return Match(rows[mid], "references", mid)
    return None


def by_subject_tag(mail: ParsedMail, prefix: str) -> Match | None:
    for number in tagged_numbers(mail.subject, prefix):
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


def resolve(
    mail: ParsedMail, prefix: str, reopen_days: int, now: datetime | None = None
) -> Decision:
    """Run the resolver table and apply the closed-ticket rule. Call inside a transaction."""
    for _name, resolver in RESOLVERS:
        found = resolver(mail, prefix)
        if found is not None:
            return _closed_ticket_rule(found, reopen_days, now or utcnow())
    return Decision(ticket_id=None, rule="new")


def _closed_ticket_rule(found: Match, reopen_days: int, now: datetime) -> Decision:
    ticket = Ticket.get_by_id(found.ticket_id)
    if ticket.status != "closed":
        return Decision(found.ticket_id, found.rule, found.detail)
    closed_at = ticket.closed_at or ticket.updated_at
    if now - closed_at <= timedelta(days=reopen_days):
        return Decision(found.ticket_id, found.rule, found.detail, reopen=True)
    return Decision(
        None, "new", f"{found.rule} {found.detail}: closed too long", link_to=found.ticket_id
    )
