"""Stage `record`, first step: delivery reports of our mail; senders reachable again. Database.

A delivery report (ingest/dsn.py) never opens a ticket and is never answered. When
it is about a mail we sent, it is stored (kind "bounce") on that mail's ticket; a
permanent failure marks the outbox row "bounced" and the recipient's Address as
bouncing (the send caps hold automatic mail to it), a delay only adds an Event. A
report about no mail of ours is Ignored. A bouncing address that writes to us
again as a person is reachable: its mark is cleared.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from mailtick.db import Address, Event, Message, Outbox, Ticket, bound, execute, get_row
from mailtick.ingest.classify import Disposition
from mailtick.ingest.dsn import DeliveryReport, Recipient, read_report
from mailtick.mail import ParsedMail, RawMail
from mailtick.outcomes import Ignored
from mailtick.tickets import Recorded, store_incoming

log = logging.getLogger("mailtick.ingest")

MAX_IDS = 50  # Message-IDs of a report looked up; the returned mail's comes first


def before_record(
    raw: RawMail | None, mail: ParsedMail, disposition: Disposition, now: datetime
) -> Recorded | None:
    """Record a delivery report here (never a ticket of its own); a person's mail clears
    the bouncing mark of its sender. None: the mail is recorded as usual."""
    if not disposition.automatic:
        reachable_again(mail, now)
        return None
    report = read_report(mail)
    return None if report is None else record_report(raw, mail, report, now)


def record_report(
    raw: RawMail | None, mail: ParsedMail, report: DeliveryReport, now: datetime
) -> Recorded:
    """Store the report on the ticket of the mail it is about and apply what it says."""
    found = our_mail(report.message_ids)
    if found is None:
        raise Ignored(f"delivery report for no mail of ours ({_named(report)})")
    sent, row = found
    ticket: Ticket = get_row(bound(), Ticket, sent.ticket_id)
    detail = f"{report.action} ({report.form}) of {sent.message_id}"
    store_incoming(ticket, raw, mail, now, kind="bounce", rule="bounce", detail=detail)
    outcome = _apply(ticket, sent, row, report, now)
    return Recorded(
        ticket_number=str(ticket.number),
        new_ticket=False,
        rule=f"bounce: {outcome}",
        reopened=False,
        queued_mail=False,
    )


def our_mail(message_ids: Sequence[str]) -> tuple[Message, Outbox | None] | None:
    """The first of `message_ids` that we sent, with its outbox row."""
    wanted = list(message_ids[:MAX_IDS])
    if not wanted:
        return None
    query = Message.select().where(Message.message_id.in_(wanted) & (Message.direction == "out"))
    sent = {m.message_id: m for m in query}
    first = next((sent[mid] for mid in wanted if mid in sent), None)
    if first is None:
        return None
    return first, Outbox.get_or_none(Outbox.message == first.id)


def _named(report: DeliveryReport) -> str:
    """What an unknown report speaks of, for the Ignored reason."""
    whom = ", ".join(r.address or r.original for r in report.recipients[:3])
    about = report.message_ids[0] if report.message_ids else "no Message-ID"
    recipients = f"Final-Recipient {whom}" if whom else "no recipient named"
    return f"{recipients}, about {about}, from {report.reporter}"


def _apply(
    ticket: Ticket, sent: Message, row: Outbox | None, report: DeliveryReport, now: datetime
) -> str:
    """Apply the report's gist; returns what happened, for the log line."""
    if report.action == "failed":
        failed = report.about("failed") or (Recipient(address="", status="5.0.0"),)
        return _bounced(ticket, sent, row, failed, now)
    recipients = report.about(report.action)
    to = ", ".join(_addressees(row, recipients)) or "?"
    summary = "; ".join(r.summary() for r in recipients)
    what = f"our {sent.kind} {sent.message_id} to {to}"
    if report.action == "delayed":
        detail = f"{what} is delayed, the receiving side keeps trying: {summary}"
        Event.create(ticket=ticket, at=now, kind="delivery-delayed", detail=detail)
    else:
        detail = f"{what}: {report.action} {summary}".strip()
        Event.create(ticket=ticket, at=now, kind="delivery-report", detail=detail)
    return f"{sent.kind} to {to} {report.action} {_codes(recipients)}".strip()


def _bounced(
    ticket: Ticket, sent: Message, row: Outbox | None, failed: Sequence[Recipient], now: datetime
) -> str:
    """A permanent failure: the outbox row is bounced, the addresses are bouncing."""
    summary = "; ".join(r.summary() for r in failed)
    addresses = _addressees(row, failed)
    again = row is not None and row.status == "bounced"  # a second report of the same bounce
    if row is not None:
        Outbox.update(status="bounced", last_error=f"bounced: {summary}", claimed_until=None).where(
            Outbox.id == row.id
        ).execute()
    if not again:
        for address in addresses:
            mark_bouncing(address, _summary_for(address, failed, summary), now)
    to = ", ".join(addresses) or "?"
    marked = f"; {to} marked bouncing" if addresses else ""
    detail = f"our {sent.kind} {sent.message_id} to {to} bounced: {summary}{marked}"
    Event.create(ticket=ticket, at=now, kind="bounced", detail=detail)
    return f"{sent.kind} to {to} failed {_codes(failed)}{marked and ', address marked bouncing'}"


def _addressees(row: Outbox | None, recipients: Sequence[Recipient]) -> list[str]:
    """The addresses we sent to that the report is about: those it names, else our only
    recipient (an alias or forward makes the final recipient differ from ours)."""
    named = {a for r in recipients for a in r.addresses}
    if row is None:
        return sorted(named)
    ours = [a for a in str(row.rcpt_to).split(",") if a]
    return [a for a in ours if a in named] or (ours if len(ours) == 1 else [])


def _summary_for(address: str, recipients: Sequence[Recipient], default: str) -> str:
    return next((r.summary() for r in recipients if address in r.addresses), default)


def _codes(recipients: Sequence[Recipient]) -> str:
    return ",".join(dict.fromkeys(r.status for r in recipients if r.status))


def mark_bouncing(address: str, summary: str, now: datetime) -> None:
    """Our mail to `address` bounced for good: count it and mark the address."""
    Address.insert(
        address=address, bouncing=True, bounces=1, last_bounce_at=now, last_bounce=summary
    ).on_conflict(
        conflict_target=[Address.address],
        update={
            Address.bouncing: True,
            Address.bounces: Address.bounces + 1,
            Address.last_bounce_at: now,
            Address.last_bounce: summary,
        },
    ).execute()


def reachable_again(mail: ParsedMail, now: datetime) -> None:
    """A person wrote from a bouncing address: it receives mail again; clear the mark and
    say so on the ticket of its last bounce."""
    sql = "SELECT bounces FROM address WHERE address = {p} AND bouncing = {p}"
    if execute(bound(), sql, mail.from_addr, True).fetchone() is None:
        return
    Address.update(bouncing=False).where(Address.address == mail.from_addr).execute()
    detail = f"{mail.from_addr} wrote again ({mail.message_id}): no longer marked bouncing"
    last = (
        Message.select(Message.ticket)
        .join(Outbox)
        .where((Outbox.status == "bounced") & (Outbox.rcpt_to == mail.from_addr))
        .order_by(Outbox.id.desc())
        .first()
    )
    if last is not None:
        Event.create(ticket=last.ticket_id, at=now, kind="reachable", detail=detail)
    log.info("reachable again %s %s: bouncing mark cleared", mail.from_addr, mail.message_id)
