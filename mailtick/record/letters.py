"""Stage `record`: the mails steps queue, composed and handed to the ledger. Database.

Each function composes one kind of mail with the Composer and queues it through the
ledger; none decides whether a mail is due, the calling step does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mailtick.answers import Reply, inert, usable_address
from mailtick.config import AgentConfig
from mailtick.db import Message, Ticket
from mailtick.ingest.quotes import split_reply
from mailtick.record.intake import Intake
from mailtick.views import age


def automatic_answer(reply: Reply) -> Reply:
    """An automatic answer repeats the sender's subject and name only inert (no links,
    short): the sender may be forged (answers.inert)."""
    return dataclasses.replace(reply, title=inert(reply.title), to_name=inert(reply.to_name))


def reply_to_sender(ticket: Ticket, intake: Intake) -> Reply:
    """An answer to the mail in hand, to its sender."""
    mail = intake.mail
    return Reply(
        number=str(ticket.number),
        title=str(ticket.subject),
        language=str(ticket.language),
        to_addr=mail.from_addr,
        to_name=mail.from_name,
        in_reply_to=mail.message_id,
        references=mail.references,
    )


def to_requester(ticket: Ticket, **changes: Any) -> Reply:
    """A mail to the ticket's requester, answering nothing by default."""
    reply = Reply(
        number=str(ticket.number),
        title=str(ticket.subject),
        language=str(ticket.language),
        to_addr=str(ticket.requester),
        to_name=str(ticket.requester_name),
        in_reply_to="",
        references=(),
    )
    return dataclasses.replace(reply, **changes)


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


def acknowledge(ticket: Ticket, intake: Intake) -> bool:
    """Queue the acknowledgement of a new ticket; False when the sender cannot get one."""
    if not usable_address(intake.mail.from_addr):
        intake.ledger.event(ticket, "not-acknowledged", "unusable sender address")
        return False
    out = intake.composer.acknowledgement(automatic_answer(reply_to_sender(ticket, intake)))
    intake.ledger.queue(ticket, out, "ack")
    return True


def drift_warning(ticket: Ticket, intake: Intake, about: Message) -> None:
    """Ask the customer whether their reply is a new topic (answer NEU / NEW to split it)."""
    reply = automatic_answer(reply_to_sender(ticket, intake))
    out = intake.composer.compose("drift_warning", reply)
    intake.ledger.queue(ticket, out, "drift-warning", about=str(about.message_id))


def split_notice(old: Ticket, new: Ticket, intake: Intake) -> None:
    """Both numbers to the customer, under the new ticket's tag."""
    composer = intake.composer
    reply = automatic_answer(to_requester(new))
    out = composer.compose("split", reply, old_tag=f"[{composer.prefix}#{old.number}]")
    intake.ledger.queue(new, out, "split")


@dataclasses.dataclass(frozen=True)
class News:
    """What the agents' notification says about a customer's mail beyond the mail itself."""

    text: str  # the text to show (after a split on request: the split-off text)
    new: bool  # a new ticket (or one just split off)
    drift: str = ""  # the topic-drift note


def notify_agents(ticket: Ticket, intake: Intake, news: News) -> None:
    """Tell the responsible agents about a customer's mail, with both reply paths."""
    desk, mail, composer = intake.settings.desk, intake.mail, intake.composer
    assert desk is not None, "called only when agents are configured"
    count = Message.select().where(Message.ticket == ticket).count()
    customer = f"{mail.from_name} <{mail.from_addr}>" if mail.from_name else mail.from_addr
    for agent in desk.responsible(ticket):
        reply = to_agent(
            ticket,
            agent,
            intake.settings.agent_language,
            from_name=f"{mail.from_name or mail.from_addr} via {composer.sender.display_name}",
            reply_to=desk.token_address("r", str(ticket.number), agent.name),
            attachments=mail.attachments,
        )
        out = composer.compose(
            "notification",
            reply,
            new=count <= 2 or news.new,
            warning=intake.identity.warning,
            drift=news.drift,
            customer=customer,
            status=ticket.status,
            priority=ticket.priority,
            owner=ticket.owner or "",
            age=age(ticket.created_at, intake.now),
            messages=count,
            attachments=", ".join(a.filename for a in mail.attachments),
            text=split_reply(news.text).visible.strip() or "(no text)",
            note_address=desk.token_address("n", str(ticket.number), agent.name),
        )
        intake.ledger.queue(ticket, out, "notification")


def tell_owner(named: Ticket, new: Ticket, intake: Intake) -> None:
    """A stranger named `named`: its owner (or queue) learns of the linked ticket `new`."""
    desk, settings = intake.settings.desk, intake.settings
    assert desk is not None, "called only when agents are configured"
    for agent in desk.responsible(named):
        reply = to_agent(named, agent, settings.agent_language)
        out = intake.composer.compose(
            "stranger",
            reply,
            stranger=intake.mail.from_addr,
            new_tag=f"[{settings.prefix}#{new.number}]",
        )
        intake.ledger.queue(named, out, "stranger")
