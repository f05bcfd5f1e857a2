"""Read-only views of tickets (`tickets`, `show`, the demo): dicts and text. Reads the database."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import peewee as pw

from mailtick.db import Address, Event, Message, Outbox, Participant, Ticket, utcnow


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value else None


def age(created: datetime, now: datetime | None = None) -> str:
    """How long ago, shortest form: "45s", "12m", "3h", "2d"."""
    seconds = max(0, int(((now or utcnow()) - created).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def ticket_summary(ticket: Ticket, messages: int) -> dict[str, Any]:
    return {
        "number": ticket.number,
        "subject": ticket.subject,
        "status": ticket.status,
        "requester": ticket.requester,
        "requester_name": ticket.requester_name,
        "language": ticket.language,
        "created_at": _iso(ticket.created_at),
        "updated_at": _iso(ticket.updated_at),
        "closed_at": _iso(ticket.closed_at),
        "age": age(ticket.created_at),
        "messages": messages,
        "linked_to": ticket.linked_to.number if ticket.linked_to_id else None,
        "owner": ticket.owner,
        "priority": ticket.priority,
        "queue": ticket.queue,
    }


FILTERS = ("status", "queue", "owner", "priority")  # `mailtick tickets --queue billing`, ...


def list_tickets(**only: str | None) -> list[dict[str, Any]]:
    """Every ticket, oldest first; `only` keeps those whose FILTERS fields have these values."""
    query = Ticket.select().order_by(Ticket.created_at, Ticket.id)
    for name, value in only.items():
        if name not in FILTERS:
            raise ValueError(f"no ticket filter {name!r}")
        if value:
            query = query.where(getattr(Ticket, name) == value)
    per_ticket = Message.select(Message.ticket, pw.fn.COUNT(Message.id)).group_by(Message.ticket)
    rows: list[Any] = list(per_ticket.tuples())
    counts = {int(ticket_id): int(n) for ticket_id, n in rows}
    return [ticket_summary(t, int(counts.get(t.id, 0))) for t in query]


def show_ticket(number: str) -> dict[str, Any] | None:
    ticket = Ticket.get_or_none(Ticket.number == number)
    if ticket is None:
        return None
    messages = list(
        Message.select().where(Message.ticket == ticket).order_by(Message.created_at, Message.id)
    )
    outbox = {
        o.message_id: o for o in Outbox.select().where(Outbox.message.in_([m.id for m in messages]))
    }
    detail = ticket_summary(ticket, len(messages))
    detail["links"] = [t.number for t in Ticket.select().where(Ticket.linked_to == ticket)]
    detail["events"] = [
        {"at": _iso(e.at), "kind": e.kind, "detail": e.detail}
        for e in Event.select().where(Event.ticket == ticket).order_by(Event.at, Event.id)
    ]
    detail["thread"] = [_message(m, outbox.get(m.id)) for m in messages]
    detail["held"] = held(messages, outbox)
    detail["bouncing"] = bouncing(ticket, outbox.values())
    return detail


def bouncing(ticket: Ticket, outbox: Iterable[Outbox]) -> list[dict[str, Any]]:
    """The ticket's addresses (requester, participants, our recipients) our mail bounces at."""
    addresses = {str(ticket.requester)}
    addresses |= {p.address for p in Participant.select().where(Participant.ticket == ticket)}
    addresses |= {a for o in outbox for a in str(o.rcpt_to).split(",") if a}
    query = Address.select().where(Address.address.in_(sorted(addresses)) & Address.bouncing)
    return [
        {
            "address": a.address,
            "bounces": a.bounces,
            "last_bounce_at": _iso(a.last_bounce_at),
            "last_bounce": a.last_bounce,
        }
        for a in query.order_by(Address.address)
    ]


def held(messages: list[Message], outbox: dict[int, Outbox]) -> list[dict[str, Any]]:
    """The mails of the ticket a send cap stopped (caps.py), each with its reason."""
    return [
        {
            "at": _iso(m.created_at),
            "kind": m.kind,
            "to": outbox[m.id].rcpt_to.split(","),
            "subject": m.subject,
            "message_id": m.message_id,
            "reason": outbox[m.id].last_error.removeprefix("held: "),
        }
        for m in messages
        if m.id in outbox and outbox[m.id].status == "held"
    ]


def _message(message: Message, out: Outbox | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "direction": message.direction,
        "kind": message.kind,
        "author": message.author_addr,
        "author_name": message.author_name,
        "at": _iso(message.created_at),
        "subject": message.subject,
        "message_id": message.message_id,
        "thread_rule": message.thread_rule,
        "thread_detail": message.thread_detail,
        "flag": message.flag,
        "drift": json.loads(message.drift) if message.drift else None,
        "text": message.text,
    }
    if out is not None:
        entry["delivery"] = {
            "status": out.status,
            "to": out.rcpt_to.split(","),
            "attempts": out.attempts,
            "sent_at": _iso(out.sent_at),
            "last_error": out.last_error,
        }
    return entry


# --- the text form: `mailtick show` and the demo print a ticket this way ------------------------


def render_ticket(t: dict[str, Any], prefix: str) -> str:
    """A show_ticket() dict as text: the head, the events, then every mail of the thread."""
    lines = _ticket_head(t, prefix)
    lines.extend(f"  {e['at']}  [{e['kind']}] {e['detail']}" for e in t["events"])
    for m in t["thread"]:
        lines.extend(_message_lines(m))
    return "\n".join(lines)


def _ticket_head(t: dict[str, Any], prefix: str) -> list[str]:
    lines = [
        f"{prefix}#{t['number']}  {t['subject']}",
        f"  status {t['status']}, priority {t['priority']}, owner {t['owner'] or '-'}, "
        f"customer {t['requester_name']} <{t['requester']}>, "
        f"opened {t['created_at']} ({t['age']} ago), {t['messages']} message(s)",
    ]
    if t["linked_to"]:
        lines.append(f"  follows {prefix}#{t['linked_to']}")
    if t["links"]:
        lines.append("  continued in " + ", ".join(f"{prefix}#{n}" for n in t["links"]))
    for b in t.get("bouncing", []):
        lines.append(
            f"  !! mail to {b['address']} bounces: {b['bounces']} bounce(s), "
            f"last {b['last_bounce_at']}: {b['last_bounce']}"
        )
    return lines


def _message_lines(m: dict[str, Any]) -> list[str]:
    """One mail of the thread: who and how, subject, flag, drift, delivery, the first lines."""
    arrow = "<-" if m["direction"] == "in" else "->"
    name = f"{m['author_name']} " if m["author_name"] else ""
    lines = [
        "",
        f"  {arrow} {m['at']}  {name}<{m['author']}>  ({_how(m)})",
        f"     Subject: {m['subject']}",
    ]
    if m.get("flag"):
        lines.append(f"     !! {m['flag']}")
    if m.get("drift"):
        lines.extend(_drift_lines(m["drift"]))
    if "delivery" in m:
        lines.append(_delivery_line(m["delivery"]))
    lines.extend(f"     | {ln}" for ln in m["text"].strip().splitlines()[:8])
    return lines


def _how(m: dict[str, Any]) -> str:
    """An incoming mail's kind and threading rule; an outgoing mail's kind."""
    if m["direction"] == "in":
        rule = m["thread_rule"]
        return f"{m['kind']}, " + ("opened the ticket" if rule == "new" else f"threaded by {rule}")
    return "acknowledgement" if m["kind"] == "ack" else str(m["kind"])


def _drift_lines(d: dict[str, Any]) -> list[str]:
    verdict = "new topic" if d["new_topic"] else "same topic"
    return [
        f"     topic: {verdict}, score {d['score']:.2f}, action {d['action']}",
        *(f"       - {reason}" for reason in d["reasons"]),
    ]


def _delivery_line(d: dict[str, Any]) -> str:
    to = ", ".join(d["to"])
    outcome = (
        str(d["last_error"])  # "held: ticket-burst, ...": never tried
        if d["status"] == "held"
        else f"{d['status']} after {d['attempts']} attempt(s) {d['last_error']}"
    )
    return f"     to {to}: {outcome}".rstrip()
