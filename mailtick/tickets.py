"""Stage `record`: ONE transaction per mail: ticket, message, attachments, outbox. Database.

`record` is the commit point of the pipeline: before it returns, nothing about the
mail exists; after it, everything does, including the acknowledgement waiting in
the outbox. It runs on the store's worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import peewee as pw

from mailtick.answers import Composer, OutgoingMail, Reply, usable_address
from mailtick.db import (
    Attachment,
    Event,
    Message,
    Outbox,
    Ticket,
    execute,
    insert_row,
    utcnow,
    write_transaction,
)
from mailtick.ingest.classify import Disposition
from mailtick.mail import ParsedMail, RawMail
from mailtick.numbers import FIRST_SEQUENCE, ticket_number
from mailtick.outcomes import Ignored
from mailtick.threading.resolve import Decision, Lookup, resolve
from mailtick.threading.subject import normalise


@dataclass(frozen=True)
class Recorded:
    ticket_number: str
    new_ticket: bool
    rule: str
    reopened: bool
    acknowledged: bool


@dataclass(frozen=True)
class RecordSettings:
    prefix: str
    reopen_days: int


def record(
    db: pw.Database,
    raw: RawMail | None,
    mail: ParsedMail,
    disposition: Disposition,
    settings: RecordSettings,
    composer: Composer,
) -> Recorded:
    """Store the mail on its ticket (a new one if need be) and queue the acknowledgement.

    Raises Ignored when the Message-ID is already stored: a refetch or a second delivery.
    """
    try:
        with write_transaction(db):
            return record_mail(raw, mail, disposition, settings, composer)
    except pw.IntegrityError as exc:  # another process stored the same Message-ID first
        raise Ignored(f"duplicate Message-ID {mail.message_id} (concurrent)") from exc


def record_mail(
    raw: RawMail | None,
    mail: ParsedMail,
    disposition: Disposition,
    settings: RecordSettings,
    composer: Composer,
) -> Recorded:
    """Store one mail; call inside a transaction (record() or the pipeline's batch)."""
    lookup = Lookup(mail, settings.prefix)
    if lookup.ticket_of(mail.message_id) is not None:
        raise Ignored(f"duplicate Message-ID {mail.message_id}")
    decision = resolve(lookup, settings.reopen_days)
    now = utcnow()
    if decision.ticket is None:
        ticket = _open_ticket(mail, decision, settings.prefix, now)
    else:
        ticket = _touch_ticket(decision.ticket, decision, now)
    _store_message(ticket, raw, mail, disposition, decision, now)
    acknowledged = decision.ticket is None and not disposition.automatic
    if acknowledged and not usable_address(mail.from_addr):
        Event.create(
            ticket=ticket, at=now, kind="not-acknowledged", detail="unusable sender address"
        )
        acknowledged = False
    if acknowledged:
        queue_mail(ticket, composer.acknowledgement(reply_to(ticket, mail)), "ack", now)
    return Recorded(
        ticket_number=str(ticket.number),
        new_ticket=decision.ticket is None,
        rule=decision.rule,
        reopened=decision.reopen,
        acknowledged=acknowledged,
    )


def next_number() -> str:
    """The next ticket number. The UPDATE takes a row lock (PostgreSQL) or runs under
    BEGIN IMMEDIATE (SQLite), so two processes never draw the same value."""
    bump = "UPDATE counter SET value = value + 1 WHERE name = {p} RETURNING value"
    [value] = execute(_db(), bump, "ticket").fetchone()
    return ticket_number(FIRST_SEQUENCE + int(value))


def _open_ticket(mail: ParsedMail, decision: Decision, prefix: str, now: datetime) -> Ticket:
    row: dict[str, Any] = {
        "number": next_number(),
        "subject": normalise(mail.subject, prefix),
        "status": "open",
        "requester": mail.from_addr,
        "requester_name": mail.from_name,
        "language": mail.language,
        "created_at": now,
        "updated_at": now,
        "linked_to": decision.link_to,
    }
    ticket = Ticket(id=insert_row(_db(), Ticket, **row), **row)
    if decision.link_to is not None:
        old = Ticket.get_by_id(decision.link_to)
        Event.create(
            ticket=ticket, at=now, kind="linked", detail=f"follows closed ticket {old.number}"
        )
        Event.create(
            ticket=old, at=now, kind="linked", detail=f"continued in ticket {ticket.number}"
        )
    return ticket


def _touch_ticket(ticket: Ticket, decision: Decision, now: datetime) -> Ticket:
    ticket.updated_at = now
    if not decision.reopen:
        execute(_db(), "UPDATE ticket SET updated_at = {p} WHERE id = {p}", now, ticket.id)
        return ticket
    ticket.status = "open"
    ticket.closed_at = None
    Event.create(ticket=ticket, at=now, kind="reopened", detail=f"by a reply ({decision.rule})")
    ticket.save()
    return ticket


def _store_message(
    ticket: Ticket,
    raw: RawMail | None,
    mail: ParsedMail,
    disposition: Disposition,
    decision: Decision,
    now: datetime,
) -> int:
    message_id = insert_row(
        _db(),
        Message,
        ticket=ticket.id,
        message_id=mail.message_id,
        direction="in",
        kind="automatic" if disposition.automatic else "customer",
        author_addr=mail.from_addr,
        author_name=mail.from_name,
        subject=mail.subject,
        text=mail.text,
        data=mail.raw,
        thread_rule=decision.rule,
        thread_detail=decision.detail,
        mailbox=raw.mailbox if raw else None,
        uidvalidity=raw.uidvalidity if raw else None,
        uid=raw.uid if raw else None,
        created_at=now,
    )
    for item in mail.attachments:
        insert_row(
            _db(),
            Attachment,
            message=message_id,
            filename=item.filename,
            content_type=item.content_type,
            size=len(item.data),
            data=item.data,
        )
    return message_id


def _db() -> pw.Database:
    """The database the models are bound to (see db.open_database)."""
    return Ticket._meta.database  # type: ignore[no-any-return]


def reply_to(ticket: Ticket, mail: ParsedMail) -> Reply:
    return Reply(
        number=str(ticket.number),
        title=str(ticket.subject),
        language=str(ticket.language),
        to_addr=mail.from_addr,
        to_name=mail.from_name,
        in_reply_to=mail.message_id,
        references=mail.references,
    )


def queue_mail(ticket: Ticket, out: OutgoingMail, kind: str, now: datetime) -> int:
    """Store an outgoing mail on its ticket and queue it; call inside the caller's transaction.
    Returns the outbox row's id."""
    message_id = insert_row(
        _db(),
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
        created_at=now,
    )
    return insert_row(
        _db(),
        Outbox,
        message=message_id,
        mail_from=out.mail_from,
        rcpt_to=",".join(out.rcpt_to),
        created_at=now,
        next_attempt_at=now,
    )
