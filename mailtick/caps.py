"""Stage `record` (send caps): may a mail we queue go out, or is it held? Database, one query.

Two robots that answer each other (an autoresponder and us) must run out of breath
quickly. Every mail we queue is checked against the caps below before it is stored;
a capped mail is still stored on its ticket, in the outbox with status "held" and
the reason, so `mailtick show` tells why it never went out.

The caps, as a table (`CAPS`), counting the earlier outbox rows to the same recipient
that were not held themselves:

- same-subject: an automatic answer on a subject (acknowledgement, drift warning,
  split notice) at most `limits.acks_per_subject` times per kind, recipient and
  subject in a day. The subject is compared without our tag and without any chain
  of reply, forward and auto-reply prefixes (`subject_key`), so an autoresponder
  answering "Automatic reply: Printer broken" does not get a second acknowledgement.
- ticket-burst: at most `limits.ticket_burst` mails per recipient and ticket in ten
  minutes, whatever their kind.
- daily-per-address: at most `limits.daily_per_address` mails to a customer address in
  a day. Agents are exempt: on a busy day they get many notifications.
- bouncing: nothing automatic goes to an address whose mail bounces (`Address.bouncing`,
  written from delivery reports).
- robot-pace: a robot answers us. Counted are the automatic answers of the last ten
  minutes to one base address (the address with its plus-part stripped, so an
  autoresponder that answers from `robot+1@…`, `robot+2@…`, … with a new subject each
  time is one correspondent) that had gone out before the mail in hand was written
  (its Date): mail that answers them. At `limits.answers_per_base_address` the next
  is held. A backlog (mail written before our answers went out) never counts, and a
  person rarely answers three acknowledgements with three new tickets in ten minutes.

Decisions for the kinds of mail:
- relay (an agent's answer to the customer) is never held: a human decided to send it.
  It counts towards the caps of the mails after it.
- The mails to agents (notification, note, command-error, stranger) are automatic
  copies of something already stored on the ticket, so holding one loses nothing:
  `mailtick show` has it. They obey ticket-burst and bouncing, so an agent's
  autoresponder cannot ping-pong with us either, but not daily-per-address.

The counts come from one statement per queued mail on the outbox index
(rcpt_to, created_at), built once per set of applicable caps: the rows of the
recipient and of its base address's family (`robot@…` and the range `robot+…`).
Every mail we compose has exactly one recipient, so rcpt_to is that address.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from mailtick.config import LimitsConfig
from mailtick.db import Outbox, execute
from mailtick.threading.subject import strip_tags

log = logging.getLogger("mailtick.caps")

# Kinds of outgoing mail (Message.kind / Outbox.kind) by who gets them.
HUMAN_KINDS = frozenset({"relay"})  # a person decided to send it: counted, never held
AGENT_KINDS = frozenset({"notification", "note", "command-error", "stranger"})
ANSWER_KINDS = frozenset({"ack", "drift-warning", "split"})  # automatic answers on a subject

# Subject prefixes, as regular expressions, matched case-insensitively before a colon
# (with an optional counter "Re[2]:" / "AW(3):").
REPLY_PREFIXES: tuple[str, ...] = (
    r"re",  # English, and most clients everywhere
    r"aw",  # German: Antwort
    r"antw",  # Dutch, German
    r"sv",  # Scandinavian: svar
    r"vs",  # Finnish: vastaus
    r"r",  # Italian
    r"rif",  # Italian: riferimento
    r"fwd?",  # forward
    r"wg",  # German: weitergeleitet
    r"tr",  # French: transféré
    r"doorst",  # Dutch: doorgestuurd
)
AUTO_REPLY_PREFIXES: tuple[str, ...] = (
    r"automatic reply",  # Outlook / Exchange
    r"auto(?:matic)?[- ]?reply",  # "Autoreply", "Auto-Reply", "Auto Reply"
    r"auto[- ]?response",
    r"auto",  # Lotus Notes, Zimbra
    r"out of (?:the )?office(?: auto ?reply)?",
    r"ooo",
    r"abwesenheitsnotiz",  # German Outlook / Notes
    r"automatische antwort",
    r"abwesend",
    r"r[ée]ponse automatique",  # French
    r"absence",
    r"respuesta autom[áa]tica",  # Spanish
    r"risposta automatica",  # Italian
    r"automatisch antwoord",  # Dutch
    r"afwezig",
    r"autosvar",  # Scandinavian
)


def _prefix_pattern(prefixes: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(rf"^\s*(?:{'|'.join(prefixes)})\s*(?:\[\d+\]|\(\d+\))?\s*:\s*", re.IGNORECASE)


_ANY_PREFIX = _prefix_pattern(REPLY_PREFIXES + AUTO_REPLY_PREFIXES)
_AUTO_PREFIX = _prefix_pattern(AUTO_REPLY_PREFIXES)
_SPACES = re.compile(r"\s+")


def subject_key(subject: str, prefix: str) -> str:
    """What the same-subject cap compares: "AW: Automatic reply: [MT#10019] Printer
    broken" and "printer  broken" are the same subject, "printer broken"."""
    text = _SPACES.sub(" ", strip_tags(subject, prefix)).strip()
    while (shorter := _ANY_PREFIX.sub("", text, count=1).strip()) != text:
        text = shorter
    return text.lower()


def auto_reply_subject(subject: str) -> bool:
    """Whether a subject starts the way autoresponders start theirs ("Automatic reply:",
    "Abwesenheitsnotiz:", ...). A person's reply to one starts with "Re:" instead."""
    return _AUTO_PREFIX.match(subject) is not None


@dataclass(frozen=True)
class Sending:
    """A mail about to be queued, as the caps see it."""

    kind: str  # ack, notification, relay, ...
    rcpt: str  # its one recipient
    ticket_id: int
    ticket_tag: str  # "MT#10019", for the reason
    subject_key: str
    written_at: datetime  # when the mail in hand (that this one answers) was written

    def family(self) -> tuple[str, str, str, str]:
        """The base address, the bounds of its plus-addresses' range in sort order
        ("robot+" up to "robot,", "," sorting right after "+"), and their domain part."""
        local, _, domain = self.rcpt.rpartition("@")
        base = local.split("+", 1)[0]
        return f"{base}@{domain}", f"{base}+", f"{base},", f"@{domain}"


@dataclass(frozen=True)
class Cap:
    name: str
    applies: Callable[[Sending], bool]  # the mails this cap may hold
    counted: str  # SQL on an earlier outbox row `o` and its message `m`: does it count?
    params: Callable[[Sending], tuple[Any, ...]]  # values for the {p} in `counted`
    window: timedelta | None  # None: `counted` is a fact about the address, 1 = true
    limit: Callable[[LimitsConfig], int]
    reason: str  # str.format(n=, rcpt=, tag=, key=, kind=, base=)
    family: bool = False  # counts the base address's whole family, not the recipient alone


DAY = timedelta(days=1)
BURST = timedelta(minutes=10)
DATE_SLACK = timedelta(seconds=2)  # a Date header has whole seconds; clocks differ a little

CAPS: tuple[Cap, ...] = (
    Cap(
        "same-subject",
        applies=lambda s: s.kind in ANSWER_KINDS,
        counted="o.kind = {p} AND o.subject_key = {p}",
        params=lambda s: (s.kind, s.subject_key),
        window=DAY,
        limit=lambda limits: limits.acks_per_subject,
        reason='{n} {kind} to {rcpt} about "{key}" in 1 day',
    ),
    Cap(
        "ticket-burst",
        applies=lambda s: s.kind not in HUMAN_KINDS,
        counted="m.ticket_id = {p}",
        params=lambda s: (s.ticket_id,),
        window=BURST,
        limit=lambda limits: limits.ticket_burst,
        reason="{n} mails to {rcpt} about {tag} in 10 min",
    ),
    Cap(
        "daily-per-address",
        applies=lambda s: s.kind not in HUMAN_KINDS | AGENT_KINDS,
        counted="1 = 1",
        params=lambda s: (),
        window=DAY,
        limit=lambda limits: limits.daily_per_address,
        reason="{n} mails to {rcpt} in 1 day",
    ),
    Cap(
        "robot-pace",
        applies=lambda s: s.kind in ANSWER_KINDS,
        counted="o.kind IN ('ack', 'drift-warning', 'split') AND o.sent_at <= {p}",
        params=lambda s: (_stamp(s.written_at + DATE_SLACK),),
        window=BURST,
        limit=lambda limits: limits.answers_per_base_address,
        reason="{n} automatic answers to {base} and its plus-addresses in 10 min",
        family=True,
    ),
    Cap(
        "bouncing",
        applies=lambda s: s.kind not in HUMAN_KINDS,
        counted="SELECT CASE WHEN a.bouncing THEN 1 ELSE 0 END FROM address a"
        " WHERE a.address = {p}",
        params=lambda s: (s.rcpt.lower(),),
        window=None,
        limit=lambda limits: 1,
        reason="mail to {rcpt} bounces",
    ),
)


def held_reason(sending: Sending, limits: LimitsConfig, now: datetime) -> str:
    """Why `sending` must be held ("ticket-burst, 10 mails to ... in 10 min"), or ""."""
    caps = tuple(cap for cap in CAPS if cap.applies(sending))
    if not caps:
        return ""
    sql = _counts_sql(tuple(cap.name for cap in caps))
    since = max((cap.window for cap in caps if cap.window), default=DAY)
    params: list[Any] = []
    for cap in caps:
        if cap.window is not None:
            params.append(_stamp(now - cap.window))
            params += () if cap.family else (sending.rcpt,)
        params += cap.params(sending)
    base, low, high, domain = sending.family()
    scope = (sending.rcpt, base, low, high, domain, domain)
    counts = execute(sql, *params, *scope, _stamp(now - since)).fetchone()
    for cap, count in zip(caps, counts, strict=True):
        if int(count or 0) >= cap.limit(limits):
            return f"{cap.name}, " + cap.reason.format(
                n=int(count),
                rcpt=sending.rcpt,
                tag=sending.ticket_tag,
                key=sending.subject_key,
                kind=_plural(sending.kind, int(count)),
                base=base,
            )
    return ""


@functools.lru_cache(maxsize=16)
def _counts_sql(names: tuple[str, ...]) -> str:
    """One statement: a column per cap, over the recipient's rows of the widest window."""
    columns = []
    for cap in (c for c in CAPS if c.name in names):
        if cap.window is None:
            columns.append(f"COALESCE(({cap.counted}), 0)")
        else:
            mine = "" if cap.family else " AND o.rcpt_to = {p}"
            when = f"o.created_at >= {{p}}{mine} AND {cap.counted}"
            columns.append(f"COALESCE(SUM(CASE WHEN {when} THEN 1 ELSE 0 END), 0)")
    family = (
        "(o.rcpt_to IN ({p}, {p}) OR (o.rcpt_to > {p} AND o.rcpt_to < {p}"
        " AND substr(o.rcpt_to, length(o.rcpt_to) - length({p}) + 1) = {p}))"
    )
    return (
        f"SELECT {', '.join(columns)} FROM outbox o JOIN message m ON m.id = o.message_id"
        f" WHERE {family} AND o.created_at >= {{p}} AND o.status <> 'held'"
    )


def _stamp(when: datetime) -> Any:
    """A time as the outbox stores it, for a plain-SQL comparison."""
    return Outbox.created_at.db_value(when)  # type: ignore[no-untyped-call]


def log_held(sending: Sending, reason: str, message_id: str) -> None:
    """The one log line of a held mail."""
    log.warning(
        "held %s to %s on %s: %s (%s)",
        sending.kind,
        sending.rcpt,
        sending.ticket_tag,
        reason,
        message_id,
    )


_KIND_NAMES = {"ack": "acknowledgement", "drift-warning": "drift warning", "split": "split notice"}


def _plural(kind: str, n: int) -> str:
    name = _KIND_NAMES.get(kind, kind)
    return name if n == 1 else name + "s"
