"""Stage `record`: the one value every record step reads (Intake) and what a step returns. Nothing.

An Intake is built once per mail, before the step table runs: the raw and parsed
mail, what classify decided, the time, the settings and who wrote it (identify).
Steps never change it; what they write goes through `intake.ledger`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mailtick.answers import Composer
from mailtick.config import DriftConfig, LimitsConfig, RoutingRule, TicketsConfig
from mailtick.db import utcnow
from mailtick.identify import Desk, Identity
from mailtick.ingest.classify import Disposition, classify
from mailtick.mail import ParsedMail, RawMail
from mailtick.record.ledger import Ledger
from mailtick.routing import Route
from mailtick.threading.resolve import Lookup


@dataclass(frozen=True)
class Settings:
    """What recording needs of the configuration: its sections, not copies of their values."""

    tickets: TicketsConfig
    drift: DriftConfig
    limits: LimitsConfig
    composer: Composer
    desk: Desk | None = None  # the agents and their reply tokens; None: no agents configured
    routing: tuple[RoutingRule, ...] = ()  # [[routing]]: queue and priority of new tickets

    @property
    def prefix(self) -> str:
        return self.tickets.prefix

    @property
    def agent_language(self) -> str:
        """The language of mails to agents."""
        return self.tickets.default_language


@dataclass(frozen=True)
class Intake:
    """One mail on its way into the ledger."""

    raw: RawMail | None  # None: not from a mailbox (`mailtick new`)
    mail: ParsedMail
    disposition: Disposition
    settings: Settings
    identity: Identity  # a verified agent, or a customer (with a warning when it claims more)
    ledger: Ledger
    lookup: Lookup  # the tickets holding the Message-IDs the mail names, asked once
    now: datetime
    route: Route = field(default_factory=Route)  # where a new ticket goes (step `route`)

    @classmethod
    def of(
        cls,
        raw: RawMail | None,
        mail: ParsedMail,
        disposition: Disposition,
        settings: Settings,
    ) -> Intake:
        desk = settings.desk
        identity = desk.identify(mail) if desk is not None else Identity(None, None)
        now = utcnow()
        ledger = Ledger(now, settings.prefix, settings.limits, written_at(mail, now))
        lookup = Lookup(mail, settings.prefix)
        return cls(raw, mail, disposition, settings, identity, ledger, lookup, now)

    @property
    def composer(self) -> Composer:
        return self.settings.composer

    def from_visitor(self, addr: str, name: str) -> Intake:
        """The same mail from the visitor a web form wrote for: a customer, never an agent,
        classified again (the form's "noreply@" sender made it look automatic)."""
        mail = dataclasses.replace(self.mail, from_addr=addr, from_name=name)
        disposition = classify(mail, self.settings.tickets.max_mail_bytes)
        identity = Identity(None, None, self.identity.warning)
        return dataclasses.replace(self, mail=mail, disposition=disposition, identity=identity)

    def renamed(self, message_id: str, flag: str) -> Intake:
        """The same mail under another Message-ID, flagged with why (the duplicate step
        gives a reused Message-ID of a different mail one derived from its content)."""
        mail = dataclasses.replace(self.mail, message_id=message_id)
        warning = "; ".join(w for w in (self.identity.warning, flag) if w)
        identity = dataclasses.replace(self.identity, warning=warning)
        lookup = Lookup(mail, self.settings.prefix)
        return dataclasses.replace(self, mail=mail, identity=identity, lookup=lookup)


def written_at(mail: ParsedMail, now: datetime) -> datetime:
    """When the mail was written, as naive UTC: its Date, never later than now (a Date in
    the future is a wrong clock), now without one."""
    if mail.date is None or mail.date.tzinfo is None:
        return now
    return min(now, mail.date.astimezone(UTC).replace(tzinfo=None))


@dataclass(frozen=True)
class Recorded:
    """What the step that handled the mail did, for the pipeline's log line."""

    ticket_number: str
    new_ticket: bool
    rule: str
    reopened: bool = False
    queued_mail: bool = False  # mail waits in the outbox (an acknowledgement, a notification, ...)
    flag: str = ""  # why the mail is suspicious, for the log line
    agent: str = ""  # the verified agent who wrote it
