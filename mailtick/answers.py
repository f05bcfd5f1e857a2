"""Composing our outgoing mail: jinja2 body + safe headers -> OutgoingMail. Touches nothing.

Values taken from incoming mail reach headers only through `email.headerregistry`
(validated, RFC 2047-encoded, CR/LF impossible) and templates only as data.
"""

from __future__ import annotations

import email.policy
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr

import jinja2

from mailtick.ingest.classify import LOOP_HEADER
from mailtick.threading.subject import normalise, tag

LANGUAGES = ("de", "en")


@dataclass(frozen=True)
class OutgoingMail:
    message_id: str
    mail_from: str  # envelope sender
    from_name: str  # display name of the From header
    rcpt_to: tuple[str, ...]
    subject: str
    text: str
    raw: bytes


@dataclass(frozen=True)
class Reply:
    """What an answer needs of the ticket and of the mail it answers."""

    number: str
    title: str
    language: str
    to_addr: str
    to_name: str
    in_reply_to: str  # the customer's Message-ID
    references: tuple[str, ...]


class Composer:
    """Renders templates into complete RFC 5322 mails from the support address."""

    def __init__(self, from_address: str, prefix: str, default_language: str) -> None:
        name, addr = parseaddr(from_address)
        self.sender = Address(display_name=name, addr_spec=addr)
        self.prefix = prefix
        self.default_language = default_language
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("mailtick", "templates"),
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # plain-text mail; values are data, never template source
            keep_trailing_newline=True,
        )

    def acknowledgement(self, reply: Reply) -> OutgoingMail:
        return self.compose("ack", reply, auto_submitted="auto-replied")

    def compose(self, template: str, reply: Reply, auto_submitted: str) -> OutgoingMail:
        language = reply.language if reply.language in LANGUAGES else self.default_language
        body = self.env.get_template(f"{template}.{language}.txt.j2").render(
            number=reply.number,
            tag=tag(self.prefix, reply.number),
            title=reply.title,
            customer_name=reply.to_name,
            support_address=self.sender.addr_spec,
            support_name=self.sender.display_name or self.sender.addr_spec,
        )
        return self._envelope(reply, body, language, auto_submitted)

    def _envelope(self, reply: Reply, body: str, language: str, auto: str) -> OutgoingMail:
        msg = EmailMessage(policy=email.policy.SMTP)
        message_id = make_msgid(idstring=f"{self.prefix}{reply.number}", domain=self.sender.domain)
        subject = f"{tag(self.prefix, reply.number)} {normalise(reply.title, self.prefix)}"
        msg["From"] = self.sender
        msg["To"] = safe_address(reply.to_addr, reply.to_name)
        msg["Subject"] = subject
        msg["Date"] = format_datetime(datetime.now(UTC), usegmt=True)
        msg["Message-ID"] = message_id
        if reply.in_reply_to:
            msg["In-Reply-To"] = reply.in_reply_to
            msg["References"] = " ".join((*reply.references[-10:], reply.in_reply_to))
        msg["Auto-Submitted"] = auto
        msg["X-Auto-Response-Suppress"] = "All"
        msg[LOOP_HEADER] = f"{self.sender.addr_spec} {reply.number}"
        msg.set_content(body)
        msg["Content-Language"] = language  # after set_content, which drops Content-* headers
        return OutgoingMail(
            message_id=message_id,
            mail_from=self.sender.addr_spec,
            from_name=self.sender.display_name,
            rcpt_to=(reply.to_addr,),
            subject=subject,
            text=body,
            raw=msg.as_bytes(),
        )


def safe_address(addr: str, name: str) -> Address:
    """An Address built from untrusted parts; a name the header cannot carry is dropped."""
    local, _, domain = addr.partition("@")
    try:
        return Address(display_name=" ".join(name.split()), username=local, domain=domain)
    except (ValueError, IndexError):
        return Address(username=local, domain=domain)
