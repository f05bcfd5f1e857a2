"""Stage `record`, for a customer's reply: a new topic is warned about or split off. Database.

Runs after the reply was stored on an existing ticket. `[drift] action` decides what
a new topic (threading/drift.py judges it) causes:
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
from datetime import timedelta

from mailtick.db import Message, Ticket, execute
from mailtick.ingest.quotes import split_reply
from mailtick.record.intake import Intake
from mailtick.record.ledger import Ledger
from mailtick.record.letters import drift_warning, split_notice
from mailtick.threading.drift import DriftVerdict, detect
from mailtick.threading.subject import normalise

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

    @property
    def split(self) -> bool:
        return self.action in ("split", "split-on-request")

    def note(self) -> str:
        """What the agents' notification says about topic drift ("" when nothing to say)."""
        if self.verdict is None or not self.verdict.new_topic:
            return ""
        reasons = "; ".join(self.verdict.reasons[:3])
        done = {"warn": "customer asked to confirm with NEU/NEW", "split": "split into this ticket"}
        what = done.get(self.action, self.action)
        return f"possible new topic (score {self.verdict.score:.2f}, {what}): {reasons}"


def check_reply(
    intake: Intake, ticket: Ticket, message: Message, closed_for: timedelta | None
) -> TopicOutcome:
    """Judge a customer's reply on `ticket` (stored as `message`) and act on it."""
    visible = split_reply(intake.mail.text).visible
    warned = _warning_answered(intake)
    if warned is not None and NEW_WORD.match(visible):
        new = split_off(intake.ledger, ticket, warned, "the customer (NEU/NEW)")
        intake.ledger.move_message(int(message.id), new)
        split_notice(ticket, new, intake)
        return TopicOutcome(new, None, "split-on-request", text=str(warned.text))
    drift = intake.settings.drift
    if drift.action == "off":
        return TopicOutcome(ticket, None, "none")
    verdict = detect(
        str(ticket.subject),
        _history(ticket, message),
        intake.mail.subject,
        visible,
        closed_for=closed_for,
        threshold=drift.threshold,
    )
    answer = intake.disposition.answer  # a warning and a split notice are answers
    action = drift.action if verdict.new_topic and answer else "none"
    decision = json.dumps({**verdict.to_json(), "action": action}, ensure_ascii=False)
    intake.ledger.judge_message(int(message.id), decision)
    if action == "warn":
        drift_warning(ticket, intake, message)
        intake.ledger.event(ticket, "drift", f"warned about {message.message_id}")
    elif action == "split":
        new = split_off(intake.ledger, ticket, message, "topic drift")
        split_notice(ticket, new, intake)
        return TopicOutcome(new, verdict, action)
    return TopicOutcome(ticket, verdict, action)


_HISTORY_SQL = (
    "SELECT text FROM message WHERE ticket_id = {p} AND direction = 'in'"
    " AND kind = 'customer' AND id <> {p} ORDER BY id DESC LIMIT " + str(HISTORY_MESSAGES)
)


def _history(ticket: Ticket, current: Message) -> list[str]:
    rows = execute(_HISTORY_SQL, ticket.id, current.id).fetchall()
    return [split_reply(str(text)).visible for (text,) in reversed(rows)]


def _warning_answered(intake: Intake) -> Message | None:
    """The customer message a drift warning was about, when the mail answers that warning."""
    mail = intake.mail
    ids = list(dict.fromkeys((*mail.in_reply_to, *mail.references[-3:])))
    if not ids:
        return None
    marks = ", ".join(["{p}"] * len(ids))
    sql = (
        "SELECT thread_detail FROM message"
        f" WHERE kind = 'drift-warning' AND message_id IN ({marks})"
    )
    row = execute(sql, *ids).fetchone()
    if row is None:
        return None
    found: Message | None = Message.get_or_none(Message.message_id == row[0])
    return found


def split_off(ledger: Ledger, ticket: Ticket, message: Message, by: str) -> Ticket:
    """Move `message` to a new ticket linked to `ticket`, titled after the message."""
    return ledger.split_off(ticket, message, _title(ticket, message, ledger.prefix), by)


def _title(ticket: Ticket, message: Message, prefix: str) -> str:
    """The message's own subject, unless it is the old ticket's: then its first line."""
    subject = normalise(str(message.subject), prefix)
    if subject.lower() != str(ticket.subject).lower() and subject != "(no subject)":
        return subject
    lines = [line.strip() for line in split_reply(str(message.text)).visible.splitlines()]
    first = next((line for line in lines if line and not _GREETING.match(line)), "")
    first = first.split(". ")[0].rstrip(".")
    return (first[:77] + "...") if len(first) > 80 else first or str(ticket.subject)
