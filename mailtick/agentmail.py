"""Stage `record` for a verified agent's mail: commands, relay to the customer, notes. Database.

Called by tickets.record_mail, inside the same transaction, only for a mail whose
identity was verified (identify.py): a valid reply token of this agent AND the
agent's From. The reply is stripped of the quoted notification and the agent's
signature; command lines at its top are parsed first, and when any of them is
wrong, nothing is executed or relayed and the agent gets an error mail instead.
An agent's automatic mail (a vacation notice answering a notification) is kept on
the ticket and does nothing else: no relay, no commands, no mail to anyone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from email.parser import BytesHeaderParser

from mailtick.answers import Composer, OutgoingMail, Reply
from mailtick.caps import auto_reply_subject
from mailtick.commands import Command, parse_commands
from mailtick.commands import help_text as command_help
from mailtick.config import AgentConfig
from mailtick.db import Event, Message, Participant, Ticket, Wish, bound, execute, insert_row
from mailtick.identify import Desk
from mailtick.ingest.classify import Disposition
from mailtick.ingest.quotes import split_reply
from mailtick.mail import ParsedMail, RawMail
from mailtick.outcomes import Rejected
from mailtick.security import ReplyToken
from mailtick.tickets import Recorded, RecordSettings, queue_mail, store_incoming, to_agent
from mailtick.topics import split_off, tell_customer

_MSGID = re.compile(r"<[^<>\s]+>")


def record_agent_mail(
    raw: RawMail | None,
    mail: ParsedMail,
    disposition: Disposition,
    agent: AgentConfig,
    token: ReplyToken,
    settings: RecordSettings,
    composer: Composer,
    now: datetime,
) -> Recorded:
    desk = settings.desk
    assert desk is not None
    ticket = _target(token.ticket)
    parsed = parse_commands(split_reply(mail.text).visible, [a.name for a in desk.agents])
    automatic = _automatic(mail, disposition) or _repeated(ticket, mail, parsed.body, now)
    if automatic:
        return _record_automatic(raw, mail, agent, ticket, automatic, parsed.body, now)
    note = token.kind == "n" or any(c.name == "note" for c in parsed.commands)
    kind = "agent-error" if parsed.errors else ("note" if note else "agent")
    store_incoming(
        ticket,
        raw,
        mail,
        now,
        kind=kind,
        rule="reply-token",
        detail=f"agent {agent.name}",
        author_name=agent.display_name or agent.name,
        text=parsed.body,
    )
    acting = Acting(ticket, agent, mail, settings, composer, now)
    if parsed.errors:
        acting.command_error(list(parsed.errors))
        return acting.recorded("reply-token: commands refused")
    if note:
        acting.note(parsed.body)
    elif parsed.body.strip():
        acting.relay(parsed.body)
    for command in parsed.commands:
        COMMANDS[command.name](acting, command)
    acting.ticket.updated_at = now
    acting.ticket.save()
    return acting.recorded("reply-token")


def _automatic(mail: ParsedMail, disposition: Disposition) -> str:
    """Why an agent's mail is not the agent speaking ("" when it is): classify found it
    automatic, or its subject starts the way autoresponders start theirs."""
    if disposition.automatic:
        return disposition.reason
    return "auto-reply subject" if auto_reply_subject(mail.subject) else ""


_SAME_TEXT = (
    "SELECT 1 FROM message WHERE ticket_id = {p} AND direction = 'in' AND author_addr = {p}"
    " AND kind IN ('agent', 'automatic') AND text = {p} AND created_at >= {p}"
)


def _repeated(ticket: Ticket, mail: ParsedMail, body: str, now: datetime) -> str:
    """A naive autoresponder sends the same text every time: the same answer from the same
    agent on the same ticket within a day is not relayed again ("" when it is new)."""
    if not body.strip():
        return ""
    since = Message.created_at.db_value(now - timedelta(days=1))  # type: ignore[no-untyped-call]
    found = execute(bound(), _SAME_TEXT, ticket.id, mail.from_addr, body, since).fetchone()
    return "the same text as its earlier mail on this ticket" if found else ""


def _record_automatic(
    raw: RawMail | None,
    mail: ParsedMail,
    agent: AgentConfig,
    ticket: Ticket,
    reason: str,
    body: str,
    now: datetime,
) -> Recorded:
    """An agent's autoresponder answered one of our mails (a vacation notice to a
    notification's Reply-To): kept on the ticket, but no relay, no commands, no mail."""
    store_incoming(
        ticket,
        raw,
        mail,
        now,
        kind="automatic",
        rule="reply-token",
        detail=f"agent {agent.name}, automatic ({reason}): not relayed",
        author_name=agent.display_name or agent.name,
        text=body,
    )
    Event.create(
        ticket=ticket,
        at=now,
        kind="not-relayed",
        detail=f"automatic mail of {agent.name}: {reason}",
    )
    rule = f"reply-token: automatic ({reason}), not relayed"
    return Recorded(str(ticket.number), False, rule, False, False, agent=agent.name)


def _target(number: str) -> Ticket:
    """The ticket a token names, following merges."""
    ticket = Ticket.get_or_none(Ticket.number == number)
    for _ in range(10):
        if ticket is None or ticket.merged_into_id is None:
            break
        ticket = Ticket.get_by_id(ticket.merged_into_id)
    if ticket is None:
        raise Rejected(f"reply token names ticket {number}, which does not exist")
    return ticket


class Acting:
    """One agent acting on one ticket: the effects of an agent's mail."""

    def __init__(
        self,
        ticket: Ticket,
        agent: AgentConfig,
        mail: ParsedMail,
        settings: RecordSettings,
        composer: Composer,
        now: datetime,
    ) -> None:
        self.ticket, self.agent, self.mail = ticket, agent, mail
        self.settings, self.composer, self.now = settings, composer, now
        self.desk: Desk = settings.desk  # type: ignore[assignment]  # checked by the caller
        self.relayed = False

    def recorded(self, rule: str) -> Recorded:
        return Recorded(str(self.ticket.number), False, rule, False, True, agent=self.agent.name)

    def event(self, kind: str, detail: str, ticket: Ticket | None = None) -> None:
        Event.create(ticket=ticket or self.ticket, at=self.now, kind=kind, detail=detail)

    def _to_agent(self, agent: AgentConfig, template: str, **context: object) -> None:
        reply = to_agent(
            self.ticket,
            agent,
            self.settings.agent_language,
            in_reply_to=self.mail.message_id,
            references=self.mail.references,
        )
        out = self.composer.compose(template, reply, **context)
        self.queue(out, template.replace("_", "-"))

    def queue(self, out: OutgoingMail, kind: str) -> None:
        settings = self.settings
        queue_mail(self.ticket, out, kind, self.now, limits=settings.limits, prefix=settings.prefix)

    def command_error(self, errors: list[str]) -> None:
        help_text = command_help(self.settings.agent_language)
        self._to_agent(self.agent, "command_error", errors=errors, help=help_text)
        self.event("command-error", f"{self.agent.name}: " + "; ".join(errors))

    def note(self, text: str) -> None:
        others = [a for a in self.desk.responsible(self.ticket) if a.name != self.agent.name]
        if self.ticket.owner and self.ticket.owner != self.agent.name:
            others += [
                a for a in self.desk.agents if a.name == self.ticket.owner and a not in others
            ]
        for other in others:
            self._to_agent(
                other, "note", agent_name=self.agent.display_name or self.agent.name, note_text=text
            )
        self.event("note", f"by {self.agent.name}")

    def relay(self, text: str) -> None:
        """The agent's answer goes to the customer from the support address."""
        last = _last_customer_message(self.ticket)
        display = self.agent.display_name or self.agent.name
        reply = Reply(
            number=str(self.ticket.number),
            title=str(self.ticket.subject),
            language=str(self.ticket.language),
            to_addr=str(self.ticket.requester),
            to_name=str(self.ticket.requester_name),
            in_reply_to=last.message_id if last else "",
            references=_references(last),
            from_name=f"{display} via {self.composer.sender.display_name or 'support'}",
            attachments=self.mail.attachments,
            auto_submitted="no",
        )
        out = self.composer.compose("relay", reply, agent_text=text.strip(), agent_name=display)
        self.queue(out, "relay")
        self.ticket.status = "answered"
        self.ticket.owner = self.agent.name  # the recurring contact person (seed 000)
        self.relayed = True
        self.event("answered", f"by {self.agent.name}")

    # -- commands: (name -> effect), interpreted by record_agent_mail ---------------------

    def set_status(self, status: str) -> None:
        self.ticket.status = status
        self.ticket.closed_at = self.now if status == "closed" else None
        self.event("status", f"{status} by {self.agent.name}")

    def assign(self, name: str) -> None:
        self.ticket.owner = name
        self.event("assigned", f"to {name} by {self.agent.name}")

    def priority(self, level: str) -> None:
        self.ticket.priority = level
        self.event("priority", f"{level} by {self.agent.name}")

    def merge(self, number: str) -> None:
        target = Ticket.get_or_none(Ticket.number == number)
        if target is None or target.id == self.ticket.id:
            self.event("command-error", f"#merge {number}: no such other ticket")
            return
        source = self.ticket
        Message.update(ticket=target).where(Message.ticket == source).execute()
        for person in Participant.select().where(Participant.ticket == source):
            known = Participant.select().where(
                (Participant.ticket == target) & (Participant.address == person.address)
            )
            if not known.exists():
                insert_row(
                    bound(), Participant, ticket=target.id, address=person.address, role="cc"
                )
        source.status, source.closed_at, source.merged_into = "closed", self.now, target
        self.event("merged", f"into {number} by {self.agent.name}")
        self.event("merged", f"{source.number} merged in by {self.agent.name}", ticket=target)

    def wish(self, name: str) -> None:
        if not Wish.select().where(Wish.name == name).exists():
            insert_row(bound(), Wish, name=name, first_at=self.now)
        Wish.update(count=Wish.count + 1, last_at=self.now).where(Wish.name == name).execute()
        self.event("wish", f'"{name}" recorded by {self.agent.name}')

    def split(self) -> None:
        """The last customer message becomes a new ticket linked to this one."""
        last = _last_customer_message(self.ticket)
        if last is None:
            self.event("command-error", "#split: no customer message to split off")
            return
        new = split_off(
            self.ticket, last, self.now, f"agent {self.agent.name}", self.composer.prefix
        )
        tell_customer(self.ticket, new, self.composer, self.now, self.settings.limits)


def _last_customer_message(ticket: Ticket) -> Message | None:
    found: Message | None = (
        Message.select()
        .where(
            (Message.ticket == ticket) & (Message.direction == "in") & (Message.kind == "customer")
        )
        .order_by(Message.created_at.desc(), Message.id.desc())
        .first()
    )
    return found


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
