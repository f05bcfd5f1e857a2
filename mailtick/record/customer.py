"""Stage `record`, step `customer`: file the mail on its ticket, then the effects table. Database.

Filing: threading decides the ticket (threading/resolve.py), a stranger is turned
away into a linked ticket of their own, the ticket is opened or touched, the mail
stored, its copied-in customers become participants, and a reply is judged for
topic drift (topic.py). What follows the filing is the AFTER_FILING table: each row
may queue mail and says whether it did. A new behaviour (routing, service levels,
required information, FAQ) is a new row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from mailtick.db import Message, Participant, Ticket
from mailtick.identify import Desk
from mailtick.record.intake import Intake, Recorded
from mailtick.record.ledger import Filing
from mailtick.record.letters import News, acknowledge, notify_agents, tell_owner
from mailtick.record.topic import TopicOutcome, check_reply
from mailtick.threading.resolve import Decision, resolve


@dataclass(frozen=True)
class Filed:
    """Where a customer's mail ended up and how it got there."""

    ticket: Ticket  # after a split: the new ticket
    decision: Decision  # what threading decided (ticket None: a new ticket was opened)
    topic: TopicOutcome | None  # None: not a reply, or automatic

    @property
    def new(self) -> bool:
        return self.decision.ticket is None


def record_customer_mail(intake: Intake) -> Recorded:
    """File the mail, then run the effects table; always handles the mail."""
    filed = file_mail(intake)
    queued = False
    for _name, effect in AFTER_FILING:
        queued = effect(intake, filed) or queued
    return Recorded(
        ticket_number=str(filed.ticket.number),
        new_ticket=filed.new,
        rule=filed.decision.rule,
        reopened=filed.decision.reopen,
        queued_mail=queued,
        flag=intake.identity.warning,
    )


def file_mail(intake: Intake) -> Filed:
    """Open or touch the ticket, store the mail, then judge a reply for topic drift."""
    mail, ledger = intake.mail, intake.ledger
    reopen_days = intake.settings.tickets.reopen_days
    decision = participants_only(resolve(intake.lookup, reopen_days), intake)
    closed_for: timedelta | None = None
    if decision.ticket is None:
        ticket = ledger.open_ticket(mail, intake.route, link_to=decision.link_to)
    else:
        ticket = decision.ticket
        closed_for = intake.now - ticket.closed_at if ticket.closed_at else None
        ledger.customer_wrote(ticket, reopen_rule=decision.rule if decision.reopen else "")
    kind = "automatic" if intake.disposition.automatic else "customer"
    filing = Filing(kind, decision.rule, decision.detail, flag=intake.identity.warning)
    stored = ledger.store_incoming(ticket, intake.raw, mail, filing)
    ledger.add_participants(ticket, new_participants(ticket, intake, new=decision.ticket is None))
    if decision.ticket is None or intake.disposition.automatic:
        return Filed(ticket, decision, None)
    message = Message(id=stored, message_id=mail.message_id, subject=mail.subject, text=mail.text)
    topic = check_reply(intake, ticket, message, closed_for)
    return Filed(topic.ticket, decision, topic)


# -- who may write into a ticket ------------------------------------------------------------


def is_participant(ticket: Ticket, addr: str) -> bool:
    """The requester and the customers copied in may write into a ticket. Agents act
    through their reply tokens (step `agent`): an agent's From alone is nobody's."""
    query = Participant.select(Participant.id).where(
        (Participant.ticket == ticket) & (Participant.address == addr)
    )
    return addr == ticket.requester or bool(query.exists())


def trusted_sender(intake: Intake) -> bool:
    """A From that may count as a participant and add others: not an agent's address
    without its token, not a From that reads two ways."""
    desk, mail = intake.settings.desk, intake.mail
    claims_agent = desk is not None and desk.agent_by_address(mail.from_addr) is not None
    return not claims_agent and not mail.from_problem


def participants_only(decision: Decision, intake: Intake) -> Decision:
    """A mail from a stranger never lands in someone else's ticket: it opens a new
    ticket linked to the one it named, whose owner is told."""
    ticket, sender = decision.ticket, intake.mail.from_addr
    if ticket is None or (trusted_sender(intake) and is_participant(ticket, sender)):
        return decision
    detail = f"{decision.rule} {decision.detail}: {sender} is not a participant"
    return Decision(None, "new", detail, link_to=int(ticket.id), outsider_of=ticket)


def new_participants(ticket: Ticket, intake: Intake, new: bool) -> set[str]:
    """The requester of a new ticket and every customer address a participant copied in."""
    mail, desk = intake.mail, intake.settings.desk
    wanted = {mail.from_addr} if new else set()
    if not trusted_sender(intake):
        return wanted  # a forged agent may not let anyone else in
    ours = desk.addresses() if desk is not None else set()
    wanted |= {addr for addr in (*mail.to, *mail.cc) if addr not in ours and not _ours(addr, desk)}
    if not new and wanted:
        wanted -= {p.address for p in Participant.select().where(Participant.ticket == ticket)}
    return wanted


def _ours(addr: str, desk: Desk | None) -> bool:
    """The support address and its plus-addresses (support+r-...@)."""
    if desk is None:
        return False
    local, _, domain = desk.support_addr.partition("@")
    their_local, _, their_domain = addr.partition("@")
    return their_domain == domain and their_local.split("+", 1)[0] == local


# -- after filing: the effects table --------------------------------------------------------

Effect = Callable[[Intake, Filed], bool]  # True: it queued mail


def _acknowledge(intake: Intake, filed: Filed) -> bool:
    """A new ticket from a person: the customer learns its number."""
    if not filed.new or not intake.disposition.answer:
        return False
    return acknowledge(filed.ticket, intake)


def _notify_agents(intake: Intake, filed: Filed) -> bool:
    """A person's mail: the responsible agents are told, with both reply paths."""
    if intake.settings.desk is None or intake.disposition.automatic:
        return False
    topic = filed.topic
    text = topic.text if topic is not None and topic.text else intake.mail.text
    split = topic is not None and topic.split
    notify_agents(filed.ticket, intake, News(text, split, topic.note() if topic else ""))
    return True


def _tell_owner(intake: Intake, filed: Filed) -> bool:
    """A stranger named someone else's ticket: its owner learns of the linked one."""
    named = filed.decision.outsider_of
    if intake.settings.desk is None or intake.disposition.automatic or named is None:
        return False
    tell_owner(named, filed.ticket, intake)
    return True


AFTER_FILING: tuple[tuple[str, Effect], ...] = (
    ("acknowledge", _acknowledge),
    ("notify-agents", _notify_agents),
    ("tell-owner", _tell_owner),
)
