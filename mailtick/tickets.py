"""Stage `record`: ONE transaction per mail: ticket, message, attachments, outbox. Database.

`record` is the commit point of the pipeline: before it returns, nothing about the
mail exists; after it, everything does, including the acknowledgement waiting in
the outbox. It runs on the store's worker thread.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import peewee as pw

from mailtick.answers import Composer, OutgoingMail, Reply, usable_address
from mailtick.caps import Sending, held_reason, log_held, subject_key
from mailtick.config import AgentConfig, LimitsConfig
from mailtick.db import (
    Attachment,
    Event,
    Message,
    Outbox,
    Participant,
    Ticket,
    bound,
    execute,
    insert_row,
    message_id_stored,
    utcnow,
    write_transaction,
)
from mailtick.identify import Desk, Identity
from mailtick.ingest.classify import Disposition
from mailtick.ingest.quotes import split_reply
from mailtick.mail import ParsedMail, RawMail
from mailtick.numbers import FIRST_SEQUENCE, ticket_number
from mailtick.outcomes import Ignored, Transient
from mailtick.threading.resolve import Decision, Lookup, resolve
from mailtick.threading.subject import normalise
from mailtick.topics import TopicOutcome, check_reply
from mailtick.views import age


@dataclass(frozen=True)
class Recorded:
    ticket_number: str
    new_ticket: bool
    rule: str
    reopened: bool
    queued_mail: bool  # mail waits in the outbox (an acknowledgement, a notification, ...)
    flag: str = ""  # why the mail is suspicious, for the log line
    agent: str = ""  # the verified agent who wrote it


@dataclass(frozen=True)
class RecordSettings:
    prefix: str
    reopen_days: int
    desk: Desk | None = None  # the agents and their reply tokens; None: no agents configured
    agent_language: str = "en"  # language of the mails to agents
    drift_action: str = "warn"  # [drift] action: warn | split | off
    drift_threshold: float = 0.6
    limits: LimitsConfig = field(default_factory=LimitsConfig)  # [limits]: send caps, caps.py


def record(
    db: pw.Database,
    raw: RawMail | None,
    mail: ParsedMail,
    disposition: Disposition,
    settings: RecordSettings,
    composer: Composer,
) -> Recorded:
    """Store the mail on its ticket (a new one if need be) and queue the acknowledgement.

    Raises Ignored when the Message-ID is already stored: a refetch or a second delivery;
    Transient on any other constraint error (try again later).
    """
    try:
        with write_transaction(db):
            return record_mail(raw, mail, disposition, settings, composer)
    except pw.IntegrityError as exc:
        if message_id_stored(mail.message_id):  # another process stored it first
            raise Ignored(f"duplicate Message-ID {mail.message_id} (concurrent)") from exc
        raise Transient(f"database constraint: {exc}") from exc  # not proven a duplicate


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
    now = utcnow()
    from mailtick.bounces import before_record  # it builds on this module

    if (report := before_record(raw, mail, disposition, now)) is not None:
        return report  # a delivery report of our mail: never a ticket of its own
    identity = settings.desk.identify(mail) if settings.desk else Identity(None, None)
    if identity.agent is not None and identity.token is not None:
        from mailtick.agentmail import record_agent_mail  # it builds on this module

        agent, token = identity.agent, identity.token
        return record_agent_mail(raw, mail, disposition, agent, token, settings, composer, now)
    decision = participants_only(resolve(lookup, settings.reopen_days), mail, settings.desk)
    ticket, topic = _store_customer_mail(
        raw, mail, disposition, decision, settings, composer, now, identity.warning
    )
    acknowledged = decision.ticket is None and not disposition.automatic
    if acknowledged:
        acknowledged = _acknowledge(ticket, mail, settings, composer, now)
    if settings.desk is not None and not disposition.automatic:
        notify_agents(ticket, mail, settings, composer, now, identity.warning, topic)
        if decision.outsider_of is not None:
            tell_owner(decision.outsider_of, ticket, mail, settings, composer, now)
    return Recorded(
        ticket_number=str(ticket.number),
        new_ticket=decision.ticket is None,
        rule=decision.rule,
        reopened=decision.reopen,
        queued_mail=acknowledged or settings.desk is not None,
        flag=identity.warning,
    )


def _store_customer_mail(
    raw: RawMail | None,
    mail: ParsedMail,
    disposition: Disposition,
    decision: Decision,
    settings: RecordSettings,
    composer: Composer,
    now: datetime,
    flag: str,
) -> tuple[Ticket, TopicOutcome | None]:
    """Open or touch the ticket, store the mail, then judge a reply for topic drift;
    returns where the mail ended up (a split moves it to a new ticket)."""
    closed_for: timedelta | None = None
    if decision.ticket is None:
        ticket = _open_ticket(mail, decision, settings.prefix, now)
    else:
        closed_for = now - decision.ticket.closed_at if decision.ticket.closed_at else None
        ticket = _touch_ticket(decision.ticket, decision, now)
    stored = _store_message(ticket, raw, mail, disposition, decision, now, flag=flag)
    add_participants(ticket, mail, settings.desk, new=decision.ticket is None)
    if decision.ticket is None or disposition.automatic:
        return ticket, None
    message = Message(id=stored, message_id=mail.message_id, subject=mail.subject, text=mail.text)
    topic = check_reply(ticket, message, mail, settings, composer, closed_for, now)
    return topic.ticket, topic


def _acknowledge(
    ticket: Ticket, mail: ParsedMail, settings: RecordSettings, composer: Composer, now: datetime
) -> bool:
    """Queue the acknowledgement of a new ticket; False when the sender cannot get one."""
    if not usable_address(mail.from_addr):
        Event.create(
            ticket=ticket, at=now, kind="not-acknowledged", detail="unusable sender address"
        )
        return False
    out = composer.acknowledgement(reply_to(ticket, mail))
    queue_mail(ticket, out, "ack", now, limits=settings.limits, prefix=settings.prefix)
    return True


def next_number() -> str:
    """The next ticket number. The UPDATE takes a row lock (PostgreSQL) or runs under
    BEGIN IMMEDIATE (SQLite), so two processes never draw the same value."""
    bump = "UPDATE counter SET value = value + 1 WHERE name = {p} RETURNING value"
    [value] = execute(bound(), bump, "ticket").fetchone()
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
    ticket = Ticket(id=insert_row(bound(), Ticket, **row), **row)
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
    if ticket.status in ("answered", "waiting"):  # the customer wrote back: work to do
        ticket.status = "open"
        ticket.save()
        return ticket
    if not decision.reopen:
        execute(bound(), "UPDATE ticket SET updated_at = {p} WHERE id = {p}", now, ticket.id)
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
    flag: str = "",
) -> int:
    kind = "automatic" if disposition.automatic else "customer"
    return store_incoming(
        ticket, raw, mail, now, kind=kind, rule=decision.rule, detail=decision.detail, flag=flag
    )


def store_incoming(
    ticket: Ticket,
    raw: RawMail | None,
    mail: ParsedMail,
    now: datetime,
    *,
    kind: str,
    rule: str,
    detail: str,
    flag: str = "",
    author_name: str | None = None,
    text: str | None = None,
) -> int:
    """Store an incoming mail and its attachments on `ticket`; returns the message's id."""
    message_id = insert_row(
        bound(),
        Message,
        ticket=ticket.id,
        message_id=mail.message_id,
        direction="in",
        kind=kind,
        author_addr=mail.from_addr,
        author_name=mail.from_name if author_name is None else author_name,
        subject=mail.subject,
        text=mail.text if text is None else text,
        data=mail.raw,
        thread_rule=rule,
        thread_detail=detail,
        flag=flag,
        account=raw.account if raw else None,
        mailbox=raw.mailbox if raw else None,
        uidvalidity=raw.uidvalidity if raw else None,
        uid=raw.uid if raw else None,
        created_at=now,
    )
    for item in mail.attachments:
        insert_row(
            bound(),
            Attachment,
            message=message_id,
            filename=item.filename,
            content_type=item.content_type,
            size=len(item.data),
            data=item.data,
        )
    return message_id


def to_agent(ticket: Ticket, agent: AgentConfig, language: str, **changes: Any) -> Reply:
    """A mail about `ticket` to an agent: generated, not answering anything by default."""
    reply = Reply(
        number=str(ticket.number),
        title=str(ticket.subject),
        language=language,
        to_addr=agent.addresses[0],
        to_name=agent.display_name,
        in_reply_to="",
        references=(),
        auto_submitted="auto-generated",
    )
    return dataclasses.replace(reply, **changes)


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


def drift_note(topic: TopicOutcome | None) -> str:
    """What the agents' notification says about topic drift ("" when nothing to say)."""
    if topic is None or topic.verdict is None or not topic.verdict.new_topic:
        return ""
    reasons = "; ".join(topic.verdict.reasons[:3])
    done = {"warn": "customer asked to confirm with NEU/NEW", "split": "split into this ticket"}
    what = done.get(topic.action, topic.action)
    return f"possible new topic (score {topic.verdict.score:.2f}, {what}): {reasons}"


def queue_mail(
    ticket: Ticket,
    out: OutgoingMail,
    kind: str,
    now: datetime,
    *,
    limits: LimitsConfig,
    prefix: str,
    about: str = "",
) -> int:
    """Store an outgoing mail on its ticket and queue it; call inside the caller's transaction.
    A mail the send caps stop (caps.py) is stored all the same, held with its reason, and
    the ticket gets a "held" event. Returns the outbox row's id."""
    sending = Sending(
        kind=kind,
        rcpt=",".join(out.rcpt_to),
        ticket_id=int(ticket.id),
        ticket_tag=f"{prefix}#{ticket.number}",
        subject_key=subject_key(out.subject, prefix),
    )
    held = held_reason(bound(), sending, limits, now)
    message_id = insert_row(
        bound(),
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
        created_at=now,
    )
    row = insert_row(
        bound(),
        Outbox,
        message=message_id,
        mail_from=out.mail_from,
        rcpt_to=sending.rcpt,
        created_at=now,
        next_attempt_at=now,
        kind=kind,
        subject_key=sending.subject_key,
        status="held" if held else "pending",
        last_error=f"held: {held}" if held else "",
    )
    if held:
        Event.create(ticket=ticket, at=now, kind="held", detail=f"{kind} to {sending.rcpt}: {held}")
        log_held(sending, held, out.message_id)
    return row


# -- agents: who may write into a ticket, who is told --------------------------------------


def is_participant(ticket: Ticket, addr: str, desk: Desk | None) -> bool:
    """The requester, customers copied in, and the agents may write into a ticket."""
    if desk is not None and desk.agent_by_address(addr) is not None:
        return True
    query = Participant.select(Participant.id).where(
        (Participant.ticket == ticket) & (Participant.address == addr)
    )
    return addr == ticket.requester or bool(query.exists())


def participants_only(decision: Decision, mail: ParsedMail, desk: Desk | None) -> Decision:
    """A mail from a stranger never lands in someone else's ticket: it opens a new
    ticket linked to the one it named, whose owner is told."""
    ticket = decision.ticket
    if ticket is None or is_participant(ticket, mail.from_addr, desk):
        return decision
    detail = f"{decision.rule} {decision.detail}: {mail.from_addr} is not a participant"
    return Decision(None, "new", detail, link_to=int(ticket.id), outsider_of=ticket)


def add_participants(ticket: Ticket, mail: ParsedMail, desk: Desk | None, new: bool) -> None:
    """The requester and every customer address a participant copied in."""
    ours = desk.addresses() if desk is not None else set()
    wanted = {mail.from_addr} if new else set()
    wanted |= {addr for addr in (*mail.to, *mail.cc) if addr not in ours and not _ours(addr, desk)}
    if not new and wanted:
        wanted -= {p.address for p in Participant.select().where(Participant.ticket == ticket)}
    for addr in sorted(wanted):
        role = "requester" if addr == ticket.requester else "cc"
        insert_row(bound(), Participant, ticket=ticket.id, address=addr, role=role)


def _ours(addr: str, desk: Desk | None) -> bool:
    """The support address and its plus-addresses (support+r-...@)."""
    if desk is None:
        return False
    local, _, domain = desk.support_addr.partition("@")
    their_local, _, their_domain = addr.partition("@")
    return their_domain == domain and their_local.split("+", 1)[0] == local


def notify_agents(
    ticket: Ticket,
    mail: ParsedMail,
    settings: RecordSettings,
    composer: Composer,
    now: datetime,
    warning: str,
    topic: TopicOutcome | None = None,
) -> None:
    """Tell the responsible agents about a customer's mail, with both reply paths. After a
    split the mail is about the new ticket, whose first message is the split-off text."""
    split = topic is not None and topic.action in ("split", "split-on-request")
    text = topic.text if topic is not None and topic.text else mail.text
    desk = settings.desk
    assert desk is not None
    count = Message.select().where(Message.ticket == ticket).count()
    names = ", ".join(a.filename for a in mail.attachments)
    customer = f"{mail.from_name} <{mail.from_addr}>" if mail.from_name else mail.from_addr
    for agent in desk.responsible(ticket):
        reply = to_agent(
            ticket,
            agent,
            settings.agent_language,
            from_name=f"{mail.from_name or mail.from_addr} via {composer.sender.display_name}",
            reply_to=desk.token_address("r", str(ticket.number), agent.name),
            attachments=mail.attachments,
        )
        out = composer.compose(
            "notification",
            reply,
            new=count <= 2 or split,
            warning=warning,
            drift=drift_note(topic),
            customer=customer,
            status=ticket.status,
            priority=ticket.priority,
            owner=ticket.owner or "",
            age=age(ticket.created_at, now),
            messages=count,
            attachments=names,
            text=split_reply(text).visible.strip() or "(no text)",
            note_address=desk.token_address("n", str(ticket.number), agent.name),
        )
        queue_mail(ticket, out, "notification", now, limits=settings.limits, prefix=settings.prefix)


def tell_owner(
    named: Ticket,
    new: Ticket,
    mail: ParsedMail,
    settings: RecordSettings,
    composer: Composer,
    now: datetime,
) -> None:
    """A stranger named `named`: its owner (or queue) learns of the linked ticket `new`."""
    desk = settings.desk
    assert desk is not None
    for agent in desk.responsible(named):
        reply = to_agent(named, agent, settings.agent_language)
        out = composer.compose(
            "stranger", reply, stranger=mail.from_addr, new_tag=f"[{settings.prefix}#{new.number}]"
        )
        queue_mail(named, out, "stranger", now, limits=settings.limits, prefix=settings.prefix)
