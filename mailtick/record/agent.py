"""Stage `record`, step `agent`: a verified agent's commands, relay and notes. Database.

Handles only a mail whose identity was verified (identify.py): a valid reply token
of this agent AND the agent's From; every other mail passes to the customer step.
The reply is stripped of the quoted notification and the agent's signature; command
lines at its top are parsed first, and when any of them is wrong, nothing is
executed or relayed and the agent gets an error mail instead. An agent's automatic
mail (a vacation notice answering a notification) is kept on the ticket and does
nothing else: no relay, no commands, no mail to anyone.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import timedelta
from email.parser import BytesHeaderParser

from mailtick.answers import Reply
from mailtick.caps import auto_reply_subject
from mailtick.commands import Command, CommandParse, parse_commands
from mailtick.commands import help_text as command_help
from mailtick.config import AgentConfig
from mailtick.db import Message, Ticket, execute
from mailtick.identify import Desk
from mailtick.ingest.quotes import split_reply
from mailtick.outcomes import Rejected
from mailtick.record.intake import Intake, Recorded
from mailtick.record.leaks import cut_leaks
from mailtick.record.ledger import Filing, follow_merges, last_customer_message
from mailtick.record.letters import split_notice, to_agent
from mailtick.record.topic import split_off

log = logging.getLogger("mailtick.ingest")

_MSGID = re.compile(r"<[^<>\s]+>")


def record_agent_mail(intake: Intake) -> Recorded | None:
    """Act on a verified agent's mail; None (pass) for everyone else's."""
    agent, token, desk = intake.identity.agent, intake.identity.token, intake.settings.desk
    if agent is None or token is None or desk is None:
        return None
    ticket = _target(token.ticket)
    parsed = parse_commands(split_reply(intake.mail.text).visible, [a.name for a in desk.agents])
    automatic = _automatic(intake) or _repeated(ticket, intake, parsed.body)
    if automatic:
        return _record_automatic(intake, agent, ticket, automatic, parsed.body)
    note = token.kind == "n" or any(c.name == "note" for c in parsed.commands)
    kind = "agent-error" if parsed.errors else ("note" if note else "agent")
    detail = f"agent {agent.name}"
    filing = Filing(kind, "reply-token", detail, author_name=_name(agent), text=parsed.body)
    intake.ledger.store_incoming(ticket, intake.raw, intake.mail, filing)
    acting = Acting(ticket, agent, intake)
    if parsed.errors:
        acting.command_error(list(parsed.errors))
        return acting.recorded("reply-token: commands refused")
    acting.obey(parsed, note)
    return acting.recorded("reply-token")


def _name(agent: AgentConfig) -> str:
    return agent.display_name or agent.name


def _automatic(intake: Intake) -> str:
    """Why an agent's mail is not the agent speaking ("" when it is): classify found it
    automatic, or its subject starts the way autoresponders start theirs."""
    if intake.disposition.automatic:
        return intake.disposition.reason
    return "auto-reply subject" if auto_reply_subject(intake.mail.subject) else ""


_SAME_TEXT = (
    "SELECT 1 FROM message WHERE ticket_id = {p} AND direction = 'in' AND author_addr = {p}"
    " AND kind IN ('agent', 'automatic') AND text = {p} AND created_at >= {p}"
)


def _repeated(ticket: Ticket, intake: Intake, body: str) -> str:
    """A naive autoresponder sends the same text every time: the same answer from the same
    agent on the same ticket within a day is not relayed again ("" when it is new)."""
    if not body.strip():
        return ""
    since = Message.created_at.db_value(intake.now - timedelta(days=1))  # type: ignore[no-untyped-call]
    sender = intake.mail.from_addr
    found = execute(_SAME_TEXT, ticket.id, sender, body, since).fetchone()
    return "the same text as its earlier mail on this ticket" if found else ""


def _record_automatic(
    intake: Intake, agent: AgentConfig, ticket: Ticket, reason: str, body: str
) -> Recorded:
    """An agent's autoresponder answered one of our mails (a vacation notice to a
    notification's Reply-To): kept on the ticket, but no relay, no commands, no mail."""
    detail = f"agent {agent.name}, automatic ({reason}): not relayed"
    filing = Filing("automatic", "reply-token", detail, author_name=_name(agent), text=body)
    intake.ledger.store_incoming(ticket, intake.raw, intake.mail, filing)
    intake.ledger.event(ticket, "not-relayed", f"automatic mail of {agent.name}: {reason}")
    rule = f"reply-token: automatic ({reason}), not relayed"
    return Recorded(str(ticket.number), new_ticket=False, rule=rule, agent=agent.name)


def _target(number: str) -> Ticket:
    """The ticket a token names, following merges."""
    ticket = follow_merges(Ticket.get_or_none(Ticket.number == number))
    if ticket is None:
        raise Rejected(f"reply token names ticket {number}, which does not exist")
    return ticket


class Acting:
    """One agent acting on one ticket: the effects of an agent's mail."""

    def __init__(self, ticket: Ticket, agent: AgentConfig, intake: Intake) -> None:
        self.ticket, self.agent, self.intake = ticket, agent, intake
        self.ledger = intake.ledger
        self.desk: Desk = intake.settings.desk  # type: ignore[assignment]  # checked by the caller

    def recorded(self, rule: str) -> Recorded:
        number, agent = str(self.ticket.number), self.agent.name
        return Recorded(number, new_ticket=False, rule=rule, queued_mail=True, agent=agent)

    def event(self, kind: str, detail: str) -> None:
        self.ledger.event(self.ticket, kind, detail)

    def obey(self, parsed: CommandParse, note: bool) -> None:
        """The agent's text (a note, or an answer to relay), then the commands in order."""
        if note:
            self.note(parsed.body)
        elif parsed.body.strip():
            self.relay(parsed.body)
        for command in parsed.commands:
            COMMANDS[command.name](self, command)
        self.ledger.update(self.ticket)

    def _to_agent(self, agent: AgentConfig, template: str, **context: object) -> None:
        mail = self.intake.mail
        reply = to_agent(
            self.ticket,
            agent,
            self.intake.settings.agent_language,
            in_reply_to=mail.message_id,
            references=mail.references,
        )
        out = self.intake.composer.compose(template, reply, **context)
        self.ledger.queue(self.ticket, out, template.replace("_", "-"))

    def command_error(self, errors: list[str]) -> None:
        help_text = command_help(self.intake.settings.agent_language)
        self._to_agent(self.agent, "command_error", errors=errors, help=help_text)
        self.event("command-error", f"{self.agent.name}: " + "; ".join(errors))

    def note(self, text: str) -> None:
        others = [a for a in self.desk.responsible(self.ticket) if a.name != self.agent.name]
        if self.ticket.owner and self.ticket.owner != self.agent.name:
            others += [
                a for a in self.desk.agents if a.name == self.ticket.owner and a not in others
            ]
        for other in others:
            self._to_agent(other, "note", agent_name=_name(self.agent), note_text=text)
        self.event("note", f"by {self.agent.name}")

    def relay(self, text: str) -> None:
        """The agent's answer goes to the customer from the support address, cut before
        anything that would leak our reply addresses or the agent's own (leaks.py)."""
        cut = cut_leaks(text, self.desk.support_addr, self.agent.addresses)
        if cut.reason:
            self.event("relay-cut", f"{self.agent.name}'s answer cut: {cut.reason}")
            log.warning(
                "relay cut on %s#%s: %s",
                self.intake.settings.prefix,
                self.ticket.number,
                cut.reason,
            )
        if not cut.text.strip():
            self.event("not-relayed", "nothing of the answer was left to relay")
            return
        text = cut.text
        last = last_customer_message(self.ticket)
        display = _name(self.agent)
        composer = self.intake.composer
        reply = Reply(
            number=str(self.ticket.number),
            title=str(self.ticket.subject),
            language=str(self.ticket.language),
            to_addr=str(self.ticket.requester),
            to_name=str(self.ticket.requester_name),
            in_reply_to=last.message_id if last else "",
            references=_references(last),
            from_name=f"{display} via {composer.sender.display_name or 'support'}",
            attachments=self.intake.mail.attachments,
            auto_submitted="no",
        )
        out = composer.compose("relay", reply, agent_text=text.strip(), agent_name=display)
        self.ledger.queue(self.ticket, out, "relay")
        # the agent who answered is the recurring contact person (seed 000)
        self.ledger.update(self.ticket, status="answered", owner=self.agent.name)
        self.event("answered", f"by {self.agent.name}")

    # -- commands: (name -> effect), interpreted by `obey` -------------------------------

    def set_status(self, status: str) -> None:
        closed_at = self.intake.now if status == "closed" else None
        self.ledger.update(self.ticket, status=status, closed_at=closed_at)
        self.event("status", f"{status} by {self.agent.name}")

    def assign(self, name: str) -> None:
        self.ledger.update(self.ticket, owner=name)
        self.event("assigned", f"to {name} by {self.agent.name}")

    def priority(self, level: str) -> None:
        self.ledger.update(self.ticket, priority=level)
        self.event("priority", f"{level} by {self.agent.name}")

    def merge(self, number: str) -> None:
        target = Ticket.get_or_none(Ticket.number == number)
        if target is None or target.id == self.ticket.id:
            self.event("command-error", f"#merge {number}: no such other ticket")
            return
        self.ledger.merge(self.ticket, target, by=self.agent.name)

    def wish(self, name: str) -> None:
        self.ledger.count_wish(name)
        self.event("wish", f'"{name}" recorded by {self.agent.name}')

    def split(self) -> None:
        """The last customer message becomes a new ticket linked to this one."""
        last = last_customer_message(self.ticket)
        if last is None:
            self.event("command-error", "#split: no customer message to split off")
            return
        new = split_off(self.ledger, self.ticket, last, f"agent {self.agent.name}")
        split_notice(self.ticket, new, self.intake)


def _references(message: Message | None) -> tuple[str, ...]:
    """The References chain of the customer's last mail (our answer adds its Message-ID)."""
    if message is None:
        return ()
    headers = BytesHeaderParser().parsebytes(bytes(message.data))
    return tuple(_MSGID.findall(str(headers.get("References", ""))))


COMMANDS: dict[str, Callable[[Acting, Command], None]] = {
    "close": lambda acting, c: acting.set_status("closed"),
    "status": lambda acting, c: acting.set_status(c.arg),
    "assign": lambda acting, c: acting.assign(c.arg),
    "priority": lambda acting, c: acting.priority(c.arg),
    "note": lambda acting, c: None,  # handled before: the whole mail is a note
    "merge": lambda acting, c: acting.merge(c.arg),
    "wish": lambda acting, c: acting.wish(c.arg),
    "split": lambda acting, c: acting.split(),
}
