"""Stage `drift`: a customer's reply on a new topic is warned about or split off. Database.

Runs inside record_mail's transaction, after a customer's reply was stored on an
existing ticket. `[drift] action` decides what a new topic causes:
- warn: the reply stays; the customer gets a short mail in their language saying
  that a reply with the single word NEU / NEW opens a ticket of its own;
- split: the reply becomes a new ticket linked to the old one, the customer is told
  both numbers;
- off: nothing is judged.
A NEU / NEW answer to such a warning, and an agent's #split, split the same way.
Every decision is stored on the message (`Message.drift`) and shown by `mailtick show`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from mailtick.answers import Composer, Reply
from mailtick.config import LimitsConfig
from mailtick.db import Event, Message, Ticket, bound, execute
from mailtick.ingest.quotes import split_reply
from mailtick.mail import ParsedMail
from mailtick.threading.drift import DriftVerdict, detect
from mailtick.threading.subject import normalise

if TYPE_CHECKING:
    from mailtick.tickets import RecordSettings

_GREETING = re.compile(
    r"^(hallo|hi|hello|hey|moin|servus|guten (tag|morgen|abend)|sehr geehrte|liebe|dear)\b"
    r".*,?$|.*,$",
    re.IGNORECASE,
)
NEW_WORD = re.compile(r"^\s*(neu|new)\s*[.!]*\s*$", re.IGNORECASE)
HISTORY_MESSAGES = 10


@dataclass(frozen=True)
class TopicOutcome:
    ticket: Ticket  # where the reply is now (a new ticket after a split)
    verdict: DriftVerdict | None  # None when nothing was judged
    action: str  # "none" | "warn" | "split" | "split-on-request"
    text: str = ""  # for a split on request: the text that now opens the new ticket


def check_reply(
    ticket: Ticket,
    message: Message,
    mail: ParsedMail,
    settings: RecordSettings,
    composer: Composer,
    closed_for: timedelta | None,
    now: datetime,
) -> TopicOutcome:
    """Judge a customer's reply on `ticket` (stored as `message`) and act on it."""
    visible = split_reply(mail.text).visible
    warned = _warning_answered(mail)
    if warned is not None and NEW_WORD.match(visible):
        new = split_off(ticket, warned, now, "the customer (NEU/NEW)", composer.prefix)
        Message.update(ticket=new).where(Message.id == message.id).execute()
        tell_customer(ticket, new, composer, now, settings.limits)
        return TopicOutcome(new, None, "split-on-request", text=str(warned.text))
    if settings.drift_action == "off":
        return TopicOutcome(ticket, None, "none")
    verdict = detect(
        str(ticket.subject),
        _history(ticket, message),
        mail.subject,
        visible,
        closed_for=closed_for,
        threshold=settings.drift_threshold,
    )
    action = settings.drift_action if verdict.new_topic else "none"
    _record(message, verdict, action)
    if action == "warn":
        _warn(ticket, message, mail, composer, now, settings.limits)
    elif action == "split":
        new = split_off(ticket, message, now, "topic drift", composer.prefix)
        tell_customer(ticket, new, composer, now, settings.limits)
        return TopicOutcome(new, verdict, action)
    return TopicOutcome(ticket, verdict, action)


_HISTORY_SQL = (
    "SELECT text FROM message WHERE ticket_id = {p} AND direction = 'in'"
    " AND kind = 'customer' AND id <> {p} ORDER BY id DESC LIMIT " + str(HISTORY_MESSAGES)
)


def _history(ticket: Ticket, current: Message) -> list[str]:
    rows = execute(bound(), _HISTORY_SQL, ticket.id, current.id).fetchall()
    return [split_reply(str(text)).visible for (text,) in reversed(rows)]


def _record(message: Message, verdict: DriftVerdict, action: str) -> None:
    decision = json.dumps({**verdict.to_json(), "action": action}, ensure_ascii=False)
    execute(bound(), "UPDATE message SET drift = {p} WHERE id = {p}", decision, message.id)


def _warning_answered(mail: ParsedMail) -> Message | None:
    """The customer message a drift warning was about, when `mail` answers that warning."""
    ids = list(dict.fromkeys((*mail.in_reply_to, *mail.references[-3:])))
    if not ids:
        return None
    marks = ", ".join(["{p}"] * len(ids))
    sql = (
        "SELECT thread_detail FROM message"
        f" WHERE kind = 'drift-warning' AND message_id IN ({marks})"
    )
    row = execute(bound(), sql, *ids).fetchone()
    if row is None:
        return None
    found: Message | None = Message.get_or_none(Message.message_id == row[0])
    return found


def _warn(
    ticket: Ticket,
    message: Message,
    mail: ParsedMail,
    composer: Composer,
    now: datetime,
    limits: LimitsConfig,
) -> None:
    from mailtick.tickets import queue_mail, reply_to  # tickets builds on this module

    out = composer.compose("drift_warning", reply_to(ticket, mail))
    about = str(message.message_id)
    queue_mail(
        ticket, out, "drift-warning", now, limits=limits, prefix=composer.prefix, about=about
    )
    Event.create(ticket=ticket, at=now, kind="drift", detail=f"warned about {message.message_id}")


def split_off(ticket: Ticket, message: Message, now: datetime, by: str, prefix: str) -> Ticket:
    """Move `message` to a new ticket linked to `ticket`."""
    from mailtick.tickets import next_number

    new = Ticket.create(
        number=next_number(),
        subject=_title(ticket, message, prefix),
        status="open",
        requester=ticket.requester,
        requester_name=ticket.requester_name,
        language=ticket.language,
        queue=ticket.queue,
        created_at=now,
        updated_at=now,
        linked_to=ticket,
    )
    Message.update(ticket=new).where(Message.id == message.id).execute()
    Event.create(
        ticket=ticket, at=now, kind="split", detail=f"{message.message_id} -> {new.number} by {by}"
    )
    Event.create(ticket=new, at=now, kind="split", detail=f"from {ticket.number} by {by}")
    return new


def _title(ticket: Ticket, message: Message, prefix: str) -> str:
    """The message's own subject, unless it is the old ticket's: then its first line."""
    subject = normalise(str(message.subject), prefix)
    if subject.lower() != str(ticket.subject).lower() and subject != "(no subject)":
        return subject
    lines = [line.strip() for line in split_reply(str(message.text)).visible.splitlines()]
    first = next((line for line in lines if line and not _GREETING.match(line)), "")
    first = first.split(". ")[0].rstrip(".")
    return (first[:77] + "...") if len(first) > 80 else first or str(ticket.subject)


def tell_customer(
    old: Ticket, new: Ticket, composer: Composer, now: datetime, limits: LimitsConfig
) -> None:
    """Both numbers to the customer, under the new ticket's tag."""
    from mailtick.tickets import queue_mail

    reply = Reply(
        number=str(new.number),
        title=str(new.subject),
        language=str(new.language),
        to_addr=str(new.requester),
        to_name=str(new.requester_name),
        in_reply_to="",
        references=(),
    )
    out = composer.compose("split", reply, old_tag=f"[{composer.prefix}#{old.number}]")
    queue_mail(new, out, "split", now, limits=limits, prefix=composer.prefix)
