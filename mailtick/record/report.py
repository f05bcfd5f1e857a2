"""Stage `record`, step `delivery-report`: bounces of our mail; senders reachable again. Database.

A delivery report (ingest/dsn.py) never opens a ticket and is never answered. When
it is about a mail we sent, it is stored (kind "bounce") on that mail's ticket; a
permanent failure marks the outbox row "bounced" and the recipient's Address as
bouncing (the send caps hold automatic mail to it), a delay only adds an Event. A
report about no mail of ours is Ignored. A bouncing address that writes to us
again as a person is reachable: its mark is cleared (and the mail passes on).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from mailtick.db import Message, Outbox, Ticket, execute, get_row
from mailtick.ingest.dsn import DeliveryReport, Recipient, read_report
from mailtick.outcomes import Ignored
from mailtick.record.intake import Intake, Recorded
from mailtick.record.ledger import Filing, Ledger

log = logging.getLogger("mailtick.ingest")

MAX_IDS = 50  # Message-IDs of a report looked up; the returned mail's comes first


@dataclass(frozen=True)
class Sent:
    """The mail of ours a report is about, and its outbox row (None: not sent by the outbox)."""

    message: Message
    row: Outbox | None

    def what(self, to: str) -> str:
        return f"our {self.message.kind} {self.message.message_id} to {to}"


def record_report(intake: Intake) -> Recorded | None:
    """Record a delivery report of our mail here (never a ticket of its own); a person's
    mail clears the bouncing mark of its sender. None: the mail is not a report (pass)."""
    if not intake.disposition.automatic:
        reachable_again(intake)
        return None
    report = read_report(intake.mail)
    return None if report is None else _record(intake, report)


def _record(intake: Intake, report: DeliveryReport) -> Recorded:
    """Store the report on the ticket of the mail it is about and apply what it says."""
    found = our_mail(report.message_ids)
    if found is None:
        raise Ignored(f"delivery report for no mail of ours ({_named(report)})")
    ticket: Ticket = get_row(Ticket, found.message.ticket_id)
    of = found.message.message_id
    filing = Filing("bounce", "bounce", f"{report.action} ({report.form}) of {of}")
    intake.ledger.store_incoming(ticket, intake.raw, intake.mail, filing)
    outcome = _apply(intake.ledger, ticket, found, report)
    return Recorded(str(ticket.number), new_ticket=False, rule=f"bounce: {outcome}")


def our_mail(message_ids: Sequence[str]) -> Sent | None:
    """The first of `message_ids` that we sent, with its outbox row."""
    wanted = list(message_ids[:MAX_IDS])
    if not wanted:
        return None
    query = Message.select().where(Message.message_id.in_(wanted) & (Message.direction == "out"))
    sent = {m.message_id: m for m in query}
    first = next((sent[mid] for mid in wanted if mid in sent), None)
    if first is None:
        return None
    return Sent(first, Outbox.get_or_none(Outbox.message == first.id))


def _named(report: DeliveryReport) -> str:
    """What an unknown report speaks of, for the Ignored reason."""
    whom = ", ".join(r.address or r.original for r in report.recipients[:3])
    about = report.message_ids[0] if report.message_ids else "no Message-ID"
    recipients = f"Final-Recipient {whom}" if whom else "no recipient named"
    return f"{recipients}, about {about}, from {report.reporter}"


def _apply(ledger: Ledger, ticket: Ticket, sent: Sent, report: DeliveryReport) -> str:
    """Apply the report's gist; returns what happened, for the log line."""
    if report.action == "failed":
        failed = report.about("failed") or (Recipient(address="", status="5.0.0"),)
        return _bounced(ledger, ticket, sent, failed)
    recipients = report.about(report.action)
    to = ", ".join(_addressees(sent.row, recipients)) or "?"
    summary = "; ".join(r.summary() for r in recipients)
    if report.action == "delayed":
        detail = f"{sent.what(to)} is delayed, the receiving side keeps trying: {summary}"
        ledger.event(ticket, "delivery-delayed", detail)
    else:
        detail = f"{sent.what(to)}: {report.action} {summary}".strip()
        ledger.event(ticket, "delivery-report", detail)
    return f"{sent.message.kind} to {to} {report.action} {_codes(recipients)}".strip()


def _bounced(ledger: Ledger, ticket: Ticket, sent: Sent, failed: Sequence[Recipient]) -> str:
    """A permanent failure: the outbox row is bounced, the addresses are bouncing."""
    summary = "; ".join(r.summary() for r in failed)
    addresses = _addressees(sent.row, failed)
    if sent.row is not None:
        again = sent.row.status == "bounced"  # a second report of the same bounce
        ledger.bounced(sent.row, summary)
    if sent.row is None or not again:
        for address in addresses:
            ledger.mark_bouncing(address, _summary_for(address, failed, summary))
    to = ", ".join(addresses) or "?"
    marked = f"; {to} marked bouncing" if addresses else ""
    ledger.event(ticket, "bounced", f"{sent.what(to)} bounced: {summary}{marked}")
    marked_log = marked and ", address marked bouncing"
    return f"{sent.message.kind} to {to} failed {_codes(failed)}{marked_log}"


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


def reachable_again(intake: Intake) -> None:
    """A person wrote from a bouncing address: it receives mail again; clear the mark and
    say so on the ticket of its last bounce."""
    mail = intake.mail
    sql = "SELECT bounces FROM address WHERE address = {p} AND bouncing = {p}"
    if execute(sql, mail.from_addr, True).fetchone() is None:
        return
    intake.ledger.reachable(mail.from_addr)
    last = (
        Message.select(Message.ticket)
        .join(Outbox)
        .where((Outbox.status == "bounced") & (Outbox.rcpt_to == mail.from_addr))
        .order_by(Outbox.id.desc())
        .first()
    )
    if last is not None:
        detail = f"{mail.from_addr} wrote again ({mail.message_id}): no longer marked bouncing"
        intake.ledger.event(last.ticket_id, "reachable", detail)
    log.info("reachable again %s %s: bouncing mark cleared", mail.from_addr, mail.message_id)
