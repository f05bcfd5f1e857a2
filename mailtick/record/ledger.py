"""Stage `record`: the ledger, sole writer of tickets, messages, events, outbox rows. Database.

Record steps decide; the ledger writes. Every write of the record stage is a method
here, so what a mail can change is listed in one place, and every one of them runs
inside the caller's transaction (the pipeline's batch, or `stage.record`). Reads that
several steps share (the ticket a number names, a ticket's last customer message)
live here too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mailtick.answers import OutgoingMail
from mailtick.caps import Sending, held_reason, log_held, subject_key
from mailtick.config import LimitsConfig
from mailtick.db import (
    Address,
    Attachment,
    Event,
    Message,
    Outbox,
    Participant,
    Ticket,
    Wish,
    execute,
    get_row,
    insert_row,
)
from mailtick.mail import ParsedMail, RawMail
from mailtick.numbers import FIRST_SEQUENCE, ticket_number
from mailtick.routing import Route
from mailtick.threading.subject import normalise

log = logging.getLogger("mailtick.ingest")

MERGE_HOPS = 10  # a merged ticket lives on in the one it was merged into, at most this deep


@dataclass(frozen=True)
class Filing:
    """How an incoming mail is filed on its ticket."""

    kind: str  # customer | automatic | agent | note | agent-error | bounce
    rule: str  # the threading rule or step that put it there
    detail: str = ""
    flag: str = ""  # why the mail is suspicious
    author_name: str | None = None  # None: the From's display name
    text: str | None = None  # None: the mail's text (agents' mail is stored without commands)


@dataclass(frozen=True)
class Ledger:
    now: datetime
    prefix: str
    limits: LimitsConfig  # the send caps `queue` applies
    written_at: datetime  # when the mail in hand was written (its Date, at most now)

    # -- tickets --------------------------------------------------------------------------

    def open_ticket(self, mail: ParsedMail, where: Route, link_to: int | None = None) -> Ticket:
        """A new ticket for `mail`'s sender in the queue and priority `where` says, linked to
        an older ticket when `link_to` is set."""
        row: dict[str, Any] = {
            "number": next_number(),
            "subject": normalise(mail.subject, self.prefix),
            "status": "open",
            "requester": mail.from_addr,
            "requester_name": mail.from_name,
            "language": mail.language,
            "created_at": self.now,
            "updated_at": self.now,
            "linked_to": link_to,
            "queue": where.queue,
            "priority": where.priority,
        }
        ticket = Ticket(id=insert_row(Ticket, **row), **row)
        if where.queue_rule or where.priority_rule:
            self.event(ticket, "routed", where.why())
        if link_to is not None:
            old = get_row(Ticket, link_to)
            self.event(ticket, "linked", f"follows closed ticket {old.number}")
            self.event(old, "linked", f"continued in ticket {ticket.number}")
        return ticket

    def customer_wrote(self, ticket: Ticket, reopen_rule: str = "") -> None:
        """A customer's mail landed on `ticket`: there is work to do (reopened when
        `reopen_rule` names the rule that found a recently closed ticket)."""
        if reopen_rule:
            self.update(ticket, status="open", closed_at=None)
            self.event(ticket, "reopened", f"by a reply ({reopen_rule})")
        elif ticket.status in ("answered", "waiting"):
            self.update(ticket, status="open")
        else:
            sql = "UPDATE ticket SET updated_at = {p} WHERE id = {p}"
            execute(sql, self.now, ticket.id)
            ticket.updated_at = self.now

    def update(self, ticket: Ticket, **fields: Any) -> None:
        """Change fields of `ticket` (and its updated_at) and save it."""
        for name, value in fields.items():
            setattr(ticket, name, value)
        ticket.updated_at = self.now
        ticket.save()

    def event(self, ticket: Ticket | int, kind: str, detail: str) -> None:
        Event.create(ticket=ticket, at=self.now, kind=kind, detail=detail)

    def split_off(self, ticket: Ticket, message: Message, title: str, by: str) -> Ticket:
        """Move `message` to a new ticket titled `title`, linked to `ticket`."""
        new = Ticket.create(
            number=next_number(),
            subject=title,
            status="open",
            requester=ticket.requester,
            requester_name=ticket.requester_name,
            language=ticket.language,
            queue=ticket.queue,
            created_at=self.now,
            updated_at=self.now,
            linked_to=ticket,
        )
        self.move_message(int(message.id), new)
        self.event(ticket, "split", f"{message.message_id} -> {new.number} by {by}")
        self.event(new, "split", f"from {ticket.number} by {by}")
        return new

    def merge(self, source: Ticket, target: Ticket, by: str) -> None:
        """Move every message and participant of `source` into `target` and close it."""
        Message.update(ticket=target).where(Message.ticket == source).execute()
        theirs = {p.address for p in Participant.select().where(Participant.ticket == target)}
        mine = Participant.select().where(Participant.ticket == source)
        self.add_participants(target, (p.address for p in mine if p.address not in theirs))
        self.update(source, status="closed", closed_at=self.now, merged_into=target)
        self.event(source, "merged", f"into {target.number} by {by}")
        self.event(target, "merged", f"{source.number} merged in by {by}")

    def add_participants(self, ticket: Ticket, addresses: Iterable[str]) -> None:
        """Let `addresses` write into `ticket` (the requester's role is "requester")."""
        for addr in sorted(set(addresses)):
            role = "requester" if addr == ticket.requester else "cc"
            insert_row(Participant, ticket=ticket.id, address=addr, role=role)

    def count_wish(self, name: str) -> None:
        if not Wish.select().where(Wish.name == name).exists():
            insert_row(Wish, name=name, first_at=self.now)
        Wish.update(count=Wish.count + 1, last_at=self.now).where(Wish.name == name).execute()

    # -- messages -------------------------------------------------------------------------

    def store_incoming(
        self, ticket: Ticket, raw: RawMail | None, mail: ParsedMail, filing: Filing
    ) -> int:
        """Store an incoming mail and its attachments on `ticket`; returns the message's id."""
        message_id = insert_row(
            Message,
            ticket=ticket.id,
            message_id=mail.message_id,
            direction="in",
            kind=filing.kind,
            author_addr=mail.from_addr,
            author_name=mail.from_name if filing.author_name is None else filing.author_name,
            subject=mail.subject,
            text=mail.text if filing.text is None else filing.text,
            data=mail.raw,
            thread_rule=filing.rule,
            thread_detail=filing.detail,
            flag=filing.flag,
            account=raw.account if raw else None,
            mailbox=raw.mailbox if raw else None,
            uidvalidity=raw.uidvalidity if raw else None,
            uid=raw.uid if raw else None,
            created_at=self.now,
        )
        for item in mail.attachments:
            insert_row(
                Attachment,
                message=message_id,
                filename=item.filename,
                content_type=item.content_type,
                size=len(item.data),
                data=item.data,
            )
        return message_id

    def move_message(self, message_id: int, ticket: Ticket) -> None:
        execute("UPDATE message SET ticket_id = {p} WHERE id = {p}", ticket.id, message_id)

    def judge_message(self, message_id: int, decision: str) -> None:
        """Keep the topic-drift decision (JSON) on the message, for `mailtick show`."""
        execute("UPDATE message SET drift = {p} WHERE id = {p}", decision, message_id)

    def queue(self, ticket: Ticket, out: OutgoingMail, kind: str, about: str = "") -> int:
        """Store an outgoing mail on its ticket and queue it. A mail the send caps stop
        (caps.py) is stored all the same, held with its reason, and the ticket gets a
        "held" event. Returns the outbox row's id."""
        sending = Sending(
            kind=kind,
            rcpt=",".join(out.rcpt_to),
            ticket_id=int(ticket.id),
            ticket_tag=f"{self.prefix}#{ticket.number}",
            subject_key=subject_key(out.subject, self.prefix),
            written_at=self.written_at,
        )
        held = held_reason(sending, self.limits, self.now)
        row = insert_row(
            Outbox,
            message=self._store_outgoing(ticket, out, kind, about),
            mail_from=out.mail_from,
            rcpt_to=sending.rcpt,
            created_at=self.now,
            next_attempt_at=self.now,
            kind=kind,
            subject_key=sending.subject_key,
            status="held" if held else "pending",
            last_error=f"held: {held}" if held else "",
        )
        if held:
            self.event(ticket, "held", f"{kind} to {sending.rcpt}: {held}")
            log_held(sending, held, out.message_id)
        return row

    def _store_outgoing(self, ticket: Ticket, out: OutgoingMail, kind: str, about: str) -> int:
        return insert_row(
            Message,
            ticket=ticket.id,
            message_id=out.message_id,
            direction="out",
            kind=kind,
            author_addr=out.mail_from,
            author_name=out.from_name,
            subject=out.subject,
            text=out.text,
            data=out.raw,
            thread_rule="ours",
            thread_detail=about,
            created_at=self.now,
        )

    # -- addresses and delivery reports ---------------------------------------------------

    def bounced(self, row: Outbox, summary: str) -> None:
        """A delivery report says our mail of outbox `row` failed for good."""
        Outbox.update(status="bounced", last_error=f"bounced: {summary}", claimed_until=None).where(
            Outbox.id == row.id
        ).execute()

    def mark_bouncing(self, address: str, summary: str) -> None:
        """Our mail to `address` bounced for good: count it and mark the address."""
        Address.insert(
            address=address, bouncing=True, bounces=1, last_bounce_at=self.now, last_bounce=summary
        ).on_conflict(
            conflict_target=[Address.address],
            update={
                Address.bouncing: True,
                Address.bounces: Address.bounces + 1,
                Address.last_bounce_at: self.now,
                Address.last_bounce: summary,
            },
        ).execute()

    def reachable(self, address: str) -> None:
        Address.update(bouncing=False).where(Address.address == address).execute()


# -- reads several steps share ------------------------------------------------------------


def next_number() -> str:
    """The next ticket number. The UPDATE takes a row lock (PostgreSQL) or runs under
    BEGIN IMMEDIATE (SQLite), so two processes never draw the same value."""
    bump = "UPDATE counter SET value = value + 1 WHERE name = {p} RETURNING value"
    [value] = execute(bump, "ticket").fetchone()
    return ticket_number(FIRST_SEQUENCE + int(value))


def follow_merges(ticket: Ticket | None) -> Ticket | None:
    """The ticket that `ticket` lives on in: itself, or the one it was merged into."""
    for _ in range(MERGE_HOPS):
        if ticket is None or ticket.merged_into_id is None:
            break
        ticket = get_row(Ticket, ticket.merged_into_id)
    return ticket


def last_customer_message(ticket: Ticket) -> Message | None:
    found: Message | None = (
        Message.select()
        .where(
            (Message.ticket == ticket) & (Message.direction == "in") & (Message.kind == "customer")
        )
        .order_by(Message.created_at.desc(), Message.id.desc())
        .first()
    )
    return found
