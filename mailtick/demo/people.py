"""Demo: the script's customer and agent, and the mail their clients write. Touches nothing."""

from __future__ import annotations

import email.policy
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr, parsedate_to_datetime

from mailtick.demo.common import SUPPORT, SUPPORT_NAME
from mailtick.demo.servers import Delivered


@dataclass(frozen=True)
class Customer:
    key: str
    name: str
    addr: str
    language: str

    @property
    def domain(self) -> str:
        return self.addr.rpartition("@")[2]

    @property
    def first_name(self) -> str:
        return self.name.split()[0]


@dataclass(frozen=True)
class Agent:
    name: str  # as in [[agents]]: #assign and the logs use it
    display_name: str
    addr: str


JOERG = Customer("joerg", "Jörg Beispiel", "joerg@kunde.example", "de")
DANA = Agent("dana", "Dana Example", "dana@example.com")
BEA = Customer("bea", "Bea Muster", "bea@firma.example", "de")
BERT = Agent("bert", "Bert Billing", "bert@example.com")  # the billing queue's agent
NEW_WORD = {"de": "NEU", "en": "NEW"}  # what a drift warning asks the customer to answer


def customer_mail(
    sender: Customer, subject: str, body: str, answers: Sequence[str] = ()
) -> EmailMessage:
    """A mail as it sits in the support mailbox after delivery; `answers`: References, oldest
    first, the last one also becomes In-Reply-To."""
    now = datetime.now(UTC)
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["Return-Path"] = f"<{sender.addr}>"
    msg["Received"] = (
        f"from mail.{sender.domain} (mail.{sender.domain} [192.0.2.25]) by mx.example.com "
        f"with ESMTPS for <{SUPPORT}>; {format_datetime(now)}"
    )
    msg["From"] = Address(sender.name, addr_spec=sender.addr)
    msg["To"] = Address(SUPPORT_NAME, addr_spec=SUPPORT)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid(domain=sender.domain)
    if answers:
        msg["In-Reply-To"] = answers[-1]
        msg["References"] = " ".join(answers)
    msg.set_content(body)
    return msg


def agent_mail(agent: Agent, notification: Delivered, body: str) -> EmailMessage:
    """The agent hits "reply" on a notification in Thunderbird: the answer on top, the "-- "
    signature, the notification quoted below; it goes to the notification's Reply-To."""
    note = notification.message
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = Address(agent.display_name, addr_spec=agent.addr)
    msg["To"] = reply_address(notification)
    msg["Subject"] = f"Re: {note['Subject']}"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain=agent.addr.rpartition("@")[2])
    msg["In-Reply-To"] = note["Message-ID"]
    msg["References"] = " ".join([*references(note), str(note["Message-ID"])])
    msg["User-Agent"] = "Mozilla Thunderbird"
    signature = f"-- \n{agent.display_name}\n{SUPPORT_NAME} | Telefon +49 30 1234567-12"
    msg.set_content(f"{body.rstrip()}\n\n{signature}\n\n{quoted(wrote(note), notification.text)}")
    return msg


def reply_address(mail: Delivered) -> str:
    return parseaddr(str(mail.message["Reply-To"] or ""))[1]


def references(message: EmailMessage) -> list[str]:
    return str(message["References"] or "").split()


def wrote(message: EmailMessage) -> str:
    """A German mail client's quote intro: "Am 23.11.2026 um 09:12 schrieb Example Support:"."""
    when = parsedate_to_datetime(str(message["Date"])).strftime("%d.%m.%Y um %H:%M")
    name, addr = parseaddr(str(message["From"]))
    return f"Am {when} schrieb {name or addr}:"


def quoted(intro: str, text: str) -> str:
    return intro + "\n" + "\n".join(f"> {ln}".rstrip() for ln in text.strip().splitlines())
