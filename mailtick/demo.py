"""`mailtick demo`: the real daemon plays a scripted conversation on embedded IMAP/SMTP servers.

A customer, and an agent who works entirely by mail: acknowledgement, notification, the
agent's answer relayed from the support address, topic drift split off on "NEU", #close.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import logging
import os
import re
import secrets
import shlex
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr, parsedate_to_datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

import aioimaplib
import aiosmtplib
import peewee as pw
from aiosmtpd.smtp import SMTP, Envelope, Session
from proxyprotocol.reader import ProxyProtocolReader
from proxyprotocol.sock import SocketInfo
from pymap.backend.dict import Config as DictConfig
from pymap.backend.dict import Login
from pymap.concurrent import Subsystem
from pymap.imap import IMAPServer
from pymap.user import Passwords, UserMetadata
from pysasl.hashing import BuiltinHash

from mailtick.app import Daemon
from mailtick.cli import render_ticket
from mailtick.config import Config, load_config
from mailtick.db import Outbox
from mailtick.security import generate_secret
from mailtick.views import show_ticket

T = TypeVar("T")

HOST = "127.0.0.1"
SUPPORT = "support@example.com"
SUPPORT_NAME = "Example Support"
SUPPORT_FROM = f"{SUPPORT_NAME} <{SUPPORT}>"
PASSWORD_ENV = "MAILTICK_IMAP_PASSWORD"
PREFIX = "MT"
SECRET_FILE = "reply-secret"  # in the demo's temporary directory, next to config.toml
WAIT_SECONDS = 15.0  # longest wait for any one expectation
STOP_SECONDS = 40.0  # the daemon itself gives its stages 30 s to finish
LANGUAGE_NAMES = {"de": "German", "en": "English"}
LOGGERS = {"mailtick": None, "pymap": logging.WARNING, "mail.log": logging.WARNING}


class DemoFailed(Exception):
    """An expectation of the script was not met, or the demo could not start."""


# --- the timeline printer ---------------------------------------------------------------------

_STYLES = {"head": "1", "imap": "36", "smtp": "33", "ok": "32", "fail": "1;31", "dim": "2"}
_INDENT = " " * 16


def wants_color(out: TextIO) -> bool:
    """ANSI colours only on a terminal, and never when NO_COLOR is set (no-color.org)."""
    return out.isatty() and not os.environ.get("NO_COLOR")


@dataclass
class Printer:
    out: TextIO
    color: bool
    started: float = field(default_factory=time.monotonic)

    def paint(self, text: str, style: str) -> str:
        return f"\033[{_STYLES[style]}m{text}\033[0m" if self.color else text

    def line(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def offset(self) -> str:
        return f"{time.monotonic() - self.started:+7.2f}s"

    def heading(self, text: str) -> None:
        self.line()
        self.line(self.paint(f"== {text}", "head"))

    def block(self, text: str) -> None:
        self.line(textwrap.indent(textwrap.dedent(text), "  "))

    def event(self, label: str, head: str, details: Sequence[str]) -> None:
        tag = self.paint(f"{label.upper():<5}", label)
        self.line(f"{self.paint(self.offset(), 'dim')}  {tag}  {head}")
        for detail in details:
            self.line(f"{_INDENT}{detail}")

    def verdict(self, good: bool, text: str) -> None:
        mark = self.paint("ok  " if good else "FAIL", "ok" if good else "fail")
        self.line(f"{self.paint(self.offset(), 'dim')}  {mark}   {text}")


def mail_summary(message: EmailMessage, lines: int = 4) -> list[str]:
    """Reply-To (when set), Subject and the first non-blank body lines, for the timeline."""
    body = message.get_body(("plain",))
    text = body.get_content() if isinstance(body, EmailMessage) else ""
    shown = [ln.strip() for ln in str(text).splitlines() if ln.strip()][:lines]
    reply_to = [f"Reply-To: {short(str(message['Reply-To']))}"] if message["Reply-To"] else []
    return [
        *reply_to,
        f"Subject: {message['Subject']}",
        *(f"| {textwrap.shorten(ln, 90)}" for ln in shown),
    ]


def parse_mail(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


# --- the embedded IMAP server: pymap's in-memory ("dict") backend ------------------------------


class _PymapConfig(DictConfig):
    @property
    def greeting(self) -> bytes:  # pymap's default asks DNS for our FQDN on every connection
        return b"Server ready (mailtick demo)"


def _pymap_args(user: str, password: str) -> argparse.Namespace:
    """What `pymap dict` would have parsed from its command line (no TLS, no demo data)."""
    return argparse.Namespace(
        host=HOST,
        port=0,
        debug=False,
        cert=None,
        key=None,
        tls=False,  # no STARTTLS: plain LOGIN on loopback
        demo_data=False,
        demo_user=user,
        demo_password=password,
        passlib_cfg=None,
        proxy_protocol=None,
        inherited_sockets=None,
    )


class ImapServer:
    """pymap on 127.0.0.1 in this event loop: one user, an empty INBOX, IDLE and MOVE."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user, password
        self.port = 0
        self.capabilities: list[str] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        config = _PymapConfig.from_args(
            _pymap_args(self.user, self.password),
            cpu_subsystem=Subsystem.for_asyncio(),  # no thread pool: nothing left running
            hash_context=BuiltinHash(rounds=1000),  # a demo password: keep LOGIN instant
            invalid_user_sleep=0.0,
            reject_dnsbl=False,
        )
        config.apply_context()
        login = Login(config)
        hashed = await Passwords(config).hash_password(self.password)
        await login.demo_user_identity.set(UserMetadata(config, self.user, password=hashed))
        imap = IMAPServer(login, config)

        async def serve(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: SocketInfo
        ) -> None:
            self._writers.add(writer)
            try:
                await imap(reader, writer, info)
            finally:
                self._writers.discard(writer)

        callback = ProxyProtocolReader(config.proxy_protocol).get_callback(serve)
        self._server = await asyncio.start_server(callback, HOST, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self.capabilities = [cap.decode() for cap in config.login_capability]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)
        self._server = None


async def append_to_inbox(port: int, user: str, password: str, raw: bytes) -> None:
    """Deliver a mail as an MTA's local delivery would: LOGIN, APPEND to INBOX, LOGOUT."""
    client = aioimaplib.IMAP4(host=HOST, port=port, timeout=10)

    async def ok(step: Awaitable[Any], what: str) -> None:
        response = await asyncio.wait_for(step, 10)
        if response.result != "OK":
            raise DemoFailed(f"IMAP {what} on the demo server: {response.result} {response.lines}")

    try:
        await asyncio.wait_for(client.wait_hello_from_server(), 10)
        await ok(client.login(user, password), "LOGIN")
        await ok(client.append(raw, mailbox="INBOX"), "APPEND")
        await ok(client.logout(), "LOGOUT")
    except (OSError, TimeoutError, aioimaplib.AioImapException) as exc:
        raise DemoFailed(f"cannot deliver to the demo IMAP server: {exc!r}") from exc
    finally:
        transport = client.protocol.transport
        if transport is not None:
            transport.close()


# --- the embedded SMTP server: aiosmtpd, records (and prints) every mail -----------------------


@dataclass(frozen=True)
class Delivered:
    at: float  # seconds since the demo started
    mail_from: str  # envelope
    rcpt_to: tuple[str, ...]
    message: EmailMessage
    raw: bytes  # exactly as the server got it

    @property
    def text(self) -> str:
        body = self.message.get_body(("plain",))
        return str(body.get_content()) if isinstance(body, EmailMessage) else ""

    @property
    def subject(self) -> str:
        return str(self.message["Subject"] or "")


def is_support(addr: str) -> bool:
    """support@example.com and its plus-addresses (support+r-...@example.com)."""
    local, _, domain = parseaddr(addr)[1].lower().rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}" == SUPPORT


def local_delivery(raw: bytes, mail_from: str, rcpt: str) -> bytes:
    """The mail as an MTA's local delivery files it: with Return-Path and Delivered-To."""
    return f"Return-Path: <{mail_from}>\r\nDelivered-To: {rcpt}\r\n".encode() + raw


class SmtpSink:
    """aiosmtpd on 127.0.0.1 in this event loop. Mail for the support address and its
    plus-addresses goes into the IMAP INBOX (so agents' replies and `--keep-running` with
    swaks work); mail to anyone else is only recorded. Every mail is printed."""

    def __init__(self, printer: Printer, deliver_local: Callable[[bytes], Awaitable[None]]) -> None:
        self.printer = printer
        self.deliver_local = deliver_local
        self.delivered: list[Delivered] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self, hostname="mx.example.com", ident="mailtick demo", loop=loop),
            HOST,
            0,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        mail = Delivered(
            at=time.monotonic() - self.printer.started,
            mail_from=envelope.mail_from or "",
            rcpt_to=tuple(envelope.rcpt_tos),
            message=parse_mail(raw),
            raw=raw,
        )
        self.delivered.append(mail)
        local = [rcpt for rcpt in mail.rcpt_to if is_support(rcpt)]
        where = "  (into the support INBOX)" if local else ""
        head = f"{mail.message['From']} -> {', '.join(map(short, mail.rcpt_to))}{where}"
        self.printer.event("smtp", head, mail_summary(mail.message))
        if local:
            try:
                await self.deliver_local(local_delivery(raw, mail.mail_from, local[0]))
            except DemoFailed as exc:
                return f"451 4.3.0 {exc}"
        return "250 2.0.0 OK: delivered"


async def submit(port: int, mail: EmailMessage, sender: str, rcpt: str) -> None:
    """Send a mail through the demo SMTP server, as a mail client (Thunderbird) would."""
    try:
        await aiosmtplib.send(
            mail, sender=sender, recipients=[rcpt], hostname=HOST, port=port, timeout=10
        )
    except (OSError, TimeoutError, aiosmtplib.SMTPException) as exc:
        raise DemoFailed(f"cannot send through the demo SMTP server: {exc!r}") from exc


# --- the scripted conversation ----------------------------------------------------------------


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


def short(addr: str) -> str:
    """A reply-token address, shortened for the timeline: support+r-10019-20415-abcd…@…"""
    return re.sub(r"(\+[rn]-\d+-\d+-[a-z2-7]{4})[a-z2-7]+@", r"\1…@", addr)


def tag(number: str) -> str:
    return f"[{PREFIX}#{number}]"


JOERG_SUBJECT = "Mails an unsere Kunden kommen nicht an"
JOERG_FIRST = """\
Hallo,

seit heute Morgen kommen unsere Mails an Kunden nicht mehr an. Fast jede Mail
kommt nach ein paar Minuten mit diesem Fehler zurück:

  550 5.7.1 <einkauf@partner.example>: Message rejected: SPF check failed for kunde.example

Betroffen sind alle Absender @kunde.example, auch Rechnungen und Angebote.
Gestern haben wir den DNS-Eintrag für unseren neuen Newsletter-Dienst geändert.
Können Sie sich das bitte dringend ansehen?

Viele Grüße
Jörg Beispiel
Beispiel & Söhne GmbH
"""
DANA_ANSWER = """\
Guten Tag Herr Beispiel,

Ihr SPF-Eintrag für kunde.example nennt seit der Änderung von gestern nur noch
den Newsletter-Dienst:

  v=spf1 include:spf.newsletter.example -all

Ihr eigener Mailserver fehlt darin, deshalb lehnen die Empfänger Ihre Mails ab.
Bitte ergänzen Sie ihn, zum Beispiel so:

  v=spf1 mx include:spf.newsletter.example -all

Sobald der Eintrag verteilt ist (meist innerhalb einer Stunde), kommen Ihre
Mails wieder an.

Viele Grüße
"""
JOERG_THANKS = """\
Hallo Frau Example,

danke, das war es! Wir haben den SPF-Eintrag ergänzt, seit einer halben Stunde
kommen unsere Mails bei den Kunden wieder an, auch die Rechnungen.

Viele Grüße
Jörg Beispiel
"""
JOERG_WIFI = """\
Hallo Frau Example,

Das WLAN im Büro geht seit heute früh nicht mehr. Kein Laptop und kein Telefon
verbindet sich, der Access Point im Flur blinkt nur noch orange.

Können Sie bitte jemanden vorbeischicken?

Viele Grüße
Jörg Beispiel
"""


Action = Callable[["Demo"], Awaitable[None]]
Expectation = Callable[["Demo"], Awaitable[str]]  # what was confirmed; raises DemoFailed


@dataclass(frozen=True)
class Step:
    title: str
    action: Action
    expect: tuple[Expectation, ...]  # checked in order, each printed as it holds


# -- actions: what the people in the script do --


def writes(customer: Customer, subject: str, body: str) -> Action:
    async def act(demo: Demo) -> None:
        await demo.deliver(customer, customer_mail(customer, subject, body))

    return act


def replies(customer: Customer, body: str, reply_word: str = "AW:") -> Action:
    """The customer hits "reply" on the last mail they got from support, quoting it."""

    async def act(demo: Demo) -> None:
        last = demo.last_mail_to(customer.addr)
        if last is None:
            raise DemoFailed(f"{customer.addr} has no mail to reply to")
        mail = customer_mail(
            customer,
            f"{reply_word} {last.subject}",
            body.rstrip() + "\n\n" + quoted(wrote(last.message), last.text),
            answers=(*references(last.message), str(last.message["Message-ID"])),
        )
        await demo.deliver(customer, mail)

    return act


def agent_replies(agent: Agent, ticket: str, body: str) -> Action:
    """The agent replies to their latest notification of the ticket, through SMTP."""

    async def act(demo: Demo) -> None:
        number = demo.numbers[ticket]
        notification = demo.last_mail_to(agent.addr, tag(number))
        if notification is None or not reply_address(notification):
            raise DemoFailed(f"{agent.addr} has no notification of {tag(number)} to reply to")
        rcpt = reply_address(notification)
        await submit(demo.smtp.port, agent_mail(agent, notification, body), agent.addr, rcpt)

    return act


# -- expectations: what mailtick must have done --


def acknowledged(customer: Customer, ticket: str) -> Expectation:
    """A new ticket for the customer and an acknowledgement in their language naming it."""

    async def expect(demo: Demo) -> str:
        ack = await demo.wait_for_mail(customer.addr, "", f"an acknowledgement to {customer.addr}")
        number = check_ack(ack, customer)
        detail = await demo.ticket(number)
        if detail is None or detail["requester"] != customer.addr:
            raise DemoFailed(f"the ack names {PREFIX}#{number}, but they have no such ticket")
        if detail["language"] != customer.language:
            raise DemoFailed(f"{PREFIX}#{number} got language {detail['language']!r}")
        demo.numbers[ticket] = number
        language = LANGUAGE_NAMES[customer.language]
        return f"new ticket {PREFIX}#{number}, acknowledged from {SUPPORT} in {language}"

    return expect


def check_ack(ack: Delivered, customer: Customer) -> str:
    """The ticket number an acknowledgement names; DemoFailed if it is not a proper one."""
    number = ticket_of(ack)
    language = ack.message["Content-Language"]  # optional header; checked when present
    problems = [
        *from_support(ack),
        f"no [{PREFIX}#...] in subject {ack.subject!r}" if number is None else "",
        "ticket number missing from the body" if number and number not in ack.text else "",
        f"Content-Language {language}, expected {customer.language}"
        if language is not None and language != customer.language
        else "",
    ]
    if number is None or any(problems):
        raise DemoFailed("unexpected acknowledgement: " + "; ".join(p for p in problems if p))
    return number


def from_support(mail: Delivered) -> list[str]:
    """Problems, if any, with a mail that mailtick should have sent as the support address."""
    sender = parseaddr(str(mail.message["From"]))[1]
    return [
        f"envelope sender {mail.mail_from!r}" if mail.mail_from != SUPPORT else "",
        f"From: {mail.message['From']}" if sender != SUPPORT else "",
    ]


def fail_on(problems: Sequence[str], what: str) -> None:
    found = [p for p in problems if p]
    if found:
        raise DemoFailed(f"{what}: " + "; ".join(found))


def notified(agent: Agent, ticket: str) -> Expectation:
    """The agent got a notification of the ticket whose Reply-To carries a reply token."""

    async def expect(demo: Demo) -> str:
        number = demo.numbers[ticket]
        note = await demo.wait_for_mail(agent.addr, tag(number), f"{agent.name}'s notification")
        reply_to = reply_address(note)
        token = re.fullmatch(rf"support\+r-{number}-\d+-[a-z2-7]+@example\.com", reply_to)
        fail_on([*from_support(note), "" if token else f"Reply-To {reply_to!r}"], "notification")
        drift = next((ln[3:] for ln in note.text.splitlines() if ln.startswith(">> ")), "")
        said = f"noting: {textwrap.shorten(drift, 70)}" if drift else f"Reply-To {short(reply_to)}"
        return f"{agent.name} notified of {tag(number)}, {said}"

    return expect


def relayed(agent: Agent, customer: Customer, ticket: str) -> Expectation:
    """The agent's answer reached the customer from the support address, not the agent's."""

    async def expect(demo: Demo) -> str:
        number = demo.numbers[ticket]
        answer = await demo.wait_for_mail(customer.addr, tag(number), f"{agent.name}'s answer")
        asked = demo.written[customer.key]
        fail_on(relay_problems(answer, agent, asked), "the relayed answer")
        detail = await demo.ticket(number) or {}
        state = detail.get("status"), detail.get("owner")
        if state != ("answered", agent.name):
            raise DemoFailed(f"{tag(number)}: status and owner {state} after the answer")
        display = f"{agent.display_name} via {SUPPORT_NAME}"
        return f'{customer.first_name} got it as "{display}" <{SUPPORT}>, no {agent.addr} in it'

    return expect


def relay_problems(answer: Delivered, agent: Agent, asked: EmailMessage) -> list[str]:
    display = f"{agent.display_name} via {SUPPORT_NAME}"
    name = parseaddr(str(answer.message["From"]))[0]
    threads = answer.message["In-Reply-To"] == asked["Message-ID"]
    return [
        *from_support(answer),
        f"From name {name!r}, expected {display!r}" if name != display else "",
        f"{agent.addr} in the customer's copy" if agent.addr.encode() in answer.raw else "",
        "the notification quoted" if "Antworten Sie auf diese Mail" in answer.text else "",
        "" if threads else "not In-Reply-To the customer's mail",
    ]


def on_topic(customer: Customer, ticket: str) -> Expectation:
    """The customer's last mail joined the ticket and was judged to be on its topic."""

    async def expect(demo: Demo) -> str:
        number = demo.numbers[ticket]
        entry = await demo.stored(number, demo.written[customer.key])
        drift = entry["drift"] or {}
        if drift.get("action") != "none":
            raise DemoFailed(f"topic-drift decision {drift} on an on-topic reply")
        return (
            f"threaded into {tag(number)} by {entry['thread_rule']}; same topic "
            f"(drift score {drift['score']:.2f})"
        )

    return expect


def nothing_to(customer: Customer) -> Expectation:
    """Once the outbox is empty, no mail since the step began went to the customer."""

    async def expect(demo: Demo) -> str:
        await demo.outbox_empty()
        extra = demo.new_mail_to(customer.addr)
        if extra is not None:
            raise DemoFailed(f"unexpected mail to {customer.addr}: {extra.subject}")
        return f"nothing was sent to {customer.first_name}"

    return expect


def drift_warned(customer: Customer, ticket: str) -> Expectation:
    """The reply stays on the ticket; the customer is asked to answer NEU for a new one."""

    async def expect(demo: Demo) -> str:
        number = demo.numbers[ticket]
        warning = await demo.wait_for_mail(customer.addr, tag(number), "a topic-drift warning")
        asked = str(demo.written[customer.key]["Message-ID"])
        word = NEW_WORD[customer.language]
        fail_on(
            [
                *from_support(warning),
                f"no {word} in the warning" if word not in warning.text.split() else "",
                "not In-Reply-To the customer's mail"
                if warning.message["In-Reply-To"] != asked
                else "",
            ],
            "the topic-drift warning",
        )
        drift = (await demo.stored(number, demo.written[customer.key]))["drift"] or {}
        reason = (drift.get("reasons") or ["?"])[0]
        return f"topic-drift warning sent (score {drift.get('score', 0):.2f}: {reason})"

    return expect


def split_off(customer: Customer, old: str, new: str) -> Expectation:
    """A new ticket, linked to the old one; the customer gets a mail naming both."""

    async def expect(demo: Demo) -> str:
        before = demo.numbers[old]

        async def told() -> tuple[Delivered, str] | None:
            mail = demo.new_mail_to(customer.addr, f"[{PREFIX}#")
            number = ticket_of(mail) if mail is not None else None
            if mail is None or number is None or number == before:
                return None
            return mail, number

        mail, number = await demo.wait_until(told, f"a mail to {customer.addr} with a new number")
        detail = await demo.ticket(number)
        if detail is None or detail["linked_to"] != before:
            raise DemoFailed(f"{tag(number)} is not linked to {tag(before)}: {detail}")
        fail_on(
            [*from_support(mail), "" if tag(before) in mail.text else f"no {tag(before)} in it"],
            f"the mail about {tag(number)}",
        )
        demo.numbers[new] = number
        title, told_to = f'"{detail["subject"]}"', customer.first_name
        return f"new ticket {tag(number)} {title}, linked to {tag(before)}; both named to {told_to}"

    return expect


def ticket_of(mail: Delivered) -> str | None:
    found = re.search(rf"\[{PREFIX}#(\d+)\]", mail.subject)
    return found[1] if found else None


def closed(agent: Agent, ticket: str) -> Expectation:
    async def expect(demo: Demo) -> str:
        number = demo.numbers[ticket]

        async def is_closed() -> dict[str, Any] | None:
            detail = await demo.ticket(number)
            return detail if detail is not None and detail["status"] == "closed" else None

        detail = await demo.wait_until(is_closed, f"{tag(number)} to be closed")
        event = next((e for e in reversed(detail["events"]) if e["kind"] == "status"), None)
        if event is None or agent.name not in event["detail"]:
            raise DemoFailed(f"{tag(number)} closed, but not by {agent.name}: {event}")
        others = [n for n in demo.numbers.values() if n != number]
        still = [f"{tag(n)} {(await demo.ticket(n) or {}).get('status')}" for n in others]
        return f"{tag(number)} {event['detail']}" + "".join(f"; {s}" for s in still)

    return expect


SCRIPT: tuple[Step, ...] = (
    Step(
        "Jörg writes in German: his company's mails bounce",
        writes(JOERG, JOERG_SUBJECT, JOERG_FIRST),
        (acknowledged(JOERG, "mail"), notified(DANA, "mail")),
    ),
    Step(
        "Dana answers in Thunderbird: a reply to her notification",
        agent_replies(DANA, "mail", DANA_ANSWER),
        (relayed(DANA, JOERG, "mail"),),
    ),
    Step(
        "Jörg replies: the mails arrive again",
        replies(JOERG, JOERG_THANKS),
        (on_topic(JOERG, "mail"), notified(DANA, "mail"), nothing_to(JOERG)),
    ),
    Step(
        "Jörg replies to the same ticket about something else: the office Wi-Fi",
        replies(JOERG, JOERG_WIFI),
        (drift_warned(JOERG, "mail"), notified(DANA, "mail")),
    ),
    Step(
        'Jörg answers the warning with "NEU"',
        replies(JOERG, "NEU"),
        (split_off(JOERG, "mail", "wifi"), notified(DANA, "wifi")),
    ),
    Step(
        'Dana closes the first ticket: "#close" in a reply to its notification',
        agent_replies(DANA, "mail", "#close"),
        (closed(DANA, "mail"), nothing_to(JOERG)),
    ),
)


def pending_mail(db: pw.Database) -> int:
    """Mail in mailtick's outbox that was not sent yet (or failed for now)."""
    return int(Outbox.select().where(Outbox.status == "pending").count())


# --- the run: servers, daemon, script ---------------------------------------------------------


@dataclass
class Demo:
    printer: Printer
    imap: ImapServer
    smtp: SmtpSink
    daemon: Daemon
    daemon_task: asyncio.Task[Config | None]
    wait_seconds: float = WAIT_SECONDS
    mark: int = 0  # SMTP deliveries before the current step
    written: dict[str, EmailMessage] = field(default_factory=dict)  # customer -> last mail
    numbers: dict[str, str] = field(default_factory=dict)  # ticket key -> ticket number

    async def deliver(self, customer: Customer, mail: EmailMessage) -> None:
        await self.deliver_raw(mail.as_bytes())
        self.written[customer.key] = mail
        self.printer.event("imap", f"{mail['From']} -> {SUPPORT} INBOX", mail_summary(mail))

    async def deliver_raw(self, raw: bytes) -> None:
        await append_to_inbox(self.imap.port, self.imap.user, self.imap.password, raw)

    def new_mail_to(self, addr: str, subject: str = "") -> Delivered | None:
        """The first mail to `addr` (with `subject` in its Subject) since the step began."""
        mails = self.smtp.delivered[self.mark :]
        return next((m for m in mails if addr in m.rcpt_to and subject in m.subject), None)

    def last_mail_to(self, addr: str, subject: str = "") -> Delivered | None:
        mails = reversed(self.smtp.delivered)
        return next((m for m in mails if addr in m.rcpt_to and subject in m.subject), None)

    async def wait_for_mail(self, addr: str, subject: str, what: str) -> Delivered:
        async def arrived() -> Delivered | None:
            return self.new_mail_to(addr, subject)

        return await self.wait_until(arrived, what)

    async def query(self, fn: Callable[..., T], *args: Any) -> T:
        """Read the database on the daemon's own database thread (its one connection)."""
        self.check_daemon()
        return await self.daemon.store.run(fn, *args)

    async def ticket(self, number: str) -> dict[str, Any] | None:
        return await self.query(show_ticket, self.daemon.store.db, number)

    async def outbox_empty(self) -> None:
        async def empty() -> bool | None:
            return True if await self.query(pending_mail, self.daemon.store.db) == 0 else None

        await self.wait_until(empty, "mailtick's outbox to empty")

    async def stored(self, number: str, mail: EmailMessage) -> dict[str, Any]:
        """`mail` as `mailtick show` lists it in ticket `number`, once it is there."""
        message_id = str(mail["Message-ID"])

        async def entry() -> dict[str, Any] | None:
            thread = (await self.ticket(number) or {}).get("thread", [])
            return next((m for m in thread if m["message_id"] == message_id), None)

        return await self.wait_until(entry, f"{message_id} in {tag(number)}")

    def check_daemon(self) -> None:
        task = self.daemon_task
        if not task.done():
            return
        error = None if task.cancelled() else task.exception()
        raise DemoFailed(f"the daemon died: {error!r}" if error else "the daemon was stopped")

    async def wait_until(self, probe: Callable[[], Awaitable[T | None]], what: str) -> T:
        """Poll `probe` until it returns something; DemoFailed after `wait_seconds`."""
        deadline = time.monotonic() + self.wait_seconds
        while True:
            self.check_daemon()
            found = await probe()
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                raise DemoFailed(f"waited {self.wait_seconds:g} s for {what}: nothing came")
            await asyncio.sleep(0.05)


@dataclass(frozen=True)
class Plan:
    steps: Sequence[Step] = SCRIPT
    wait_seconds: float = WAIT_SECONDS  # per expectation
    keep_running: bool = False  # after the script, serve until SIGINT/SIGTERM


@dataclass
class DemoResult:
    failure: str | None = None
    numbers: dict[str, str] = field(default_factory=dict)  # ticket key -> number
    tickets: list[dict[str, Any]] = field(default_factory=list)  # views.show_ticket, per ticket
    delivered: list[Delivered] = field(default_factory=list)  # every mail the SMTP server got
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 0 if self.failure is None else 1


def config_text(imap_port: int, smtp_port: int) -> str:
    return textwrap.dedent(f"""\
        # mailtick demo: embedded servers on {HOST}; this file is deleted when the demo ends.
        [imap]
        host = "{HOST}"
        port = {imap_port}
        security = "none"
        username = "{SUPPORT}"
        password_env = "{PASSWORD_ENV}"
        idle = true
        poll_interval = 0.5
        reconnect_min = 0.2
        reconnect_max = 2

        [smtp]
        host = "{HOST}"
        port = {smtp_port}
        security = "none"
        from_address = "{SUPPORT_FROM}"
        retry_min = 1
        retry_max = 5

        [database]
        url = "sqlite:///mailtick.db"

        [tickets]
        prefix = "{PREFIX}"
        default_language = "de"

        [log]
        level = "INFO"

        [quarantine]
        directory = "quarantine"

        [drift]
        action = "warn"

        [security]
        secret_file = "{SECRET_FILE}"

        [[agents]]
        name = "{DANA.name}"
        addresses = ["{DANA.addr}"]
        display_name = "{DANA.display_name}"
        """)


def write_secret(path: Path) -> None:
    """The key that signs the agents' reply addresses, as `mailtick init` writes it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(generate_secret().hex() + "\n")


@contextlib.contextmanager
def logging_to(path: Path, level: str) -> Iterator[None]:
    """mailtick's (and the servers') log lines go to `path`, not the terminal; undone after."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = []
    for name, own_level in LOGGERS.items():
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.addHandler(handler)
        logger.setLevel(own_level or level)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, old_level, propagate in saved:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
            logger.propagate = propagate
        handler.close()


@contextlib.asynccontextmanager
async def servers(printer: Printer, password: str) -> AsyncIterator[tuple[ImapServer, SmtpSink]]:
    imap = ImapServer(SUPPORT, password)

    async def into_inbox(raw: bytes) -> None:
        await append_to_inbox(imap.port, SUPPORT, password, raw)

    smtp = SmtpSink(printer, into_inbox)
    try:
        await imap.start()
        await smtp.start()
        yield imap, smtp
    finally:
        await smtp.stop()
        await imap.stop()


@contextlib.asynccontextmanager
async def daemon_running(
    config: Config,
) -> AsyncIterator[tuple[Daemon, asyncio.Task[Config | None]]]:
    """`mailtick run` as a task of this event loop; stopped (and awaited) on the way out."""
    daemon = Daemon(config)
    task = asyncio.create_task(daemon.run(), name="mailtick-daemon")
    try:
        yield daemon, task
    finally:
        crash = await stop_daemon(daemon, task)
    if crash is not None:  # reached only when the demo itself went well
        raise DemoFailed(f"the daemon failed: {crash!r}")


async def stop_daemon(daemon: Daemon, task: asyncio.Task[Config | None]) -> BaseException | None:
    """Ask the daemon to stop and wait for it; what it died of, if anything."""
    daemon.request_stop("demo over")
    done, _ = await asyncio.wait([task], timeout=STOP_SECONDS)
    if not done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return TimeoutError(f"still running {STOP_SECONDS:g} s after request_stop()")
    return None if task.cancelled() else task.exception()


async def play_script(demo: Demo, steps: Sequence[Step], result: DemoResult) -> None:
    printer = demo.printer

    async def logged_in() -> bool | None:
        return True if demo.daemon.watcher.connected.is_set() else None

    await demo.wait_until(logged_in, "the daemon to log in to IMAP")
    printer.verdict(True, f"mailtick run is up: logged in to IMAP as {SUPPORT}, waiting for mail")
    for index, step in enumerate(steps, 1):
        printer.heading(f"{index}/{len(steps)}  {step.title}")
        demo.mark = len(demo.smtp.delivered)
        try:
            await step.action(demo)
            for expectation in step.expect:
                printer.verdict(True, await expectation(demo))
        except DemoFailed as exc:
            printer.verdict(False, str(exc))
            raise DemoFailed(f"step {index} ({step.title}): {exc}") from exc
        finally:
            result.numbers = dict(demo.numbers)


async def show_tickets(demo: Demo, result: DemoResult) -> None:
    printer = demo.printer
    printer.heading("The tickets, as `mailtick show` prints them")
    for number in dict.fromkeys(demo.numbers.values()):
        detail = await demo.ticket(number)
        if detail is None:
            raise DemoFailed(f"ticket {PREFIX}#{number} disappeared")
        result.tickets.append(detail)
        printer.line()
        printer.line(render_ticket(detail, PREFIX))


def real_mailbox_help(printer: Printer) -> None:
    printer.heading("Point mailtick at your real mailbox")
    printer.block(
        f"""\
          1. Copy the documented example config.toml from the mailtick sources:
               cp config.toml /etc/mailtick/config.toml
             and set imap.host/username, smtp.host/from_address and database.url.
          2. One [[agents]] block per agent (name, addresses, display_name), then create
             the key that signs their reply addresses:
               mailtick init -c /etc/mailtick/config.toml
             Your mail server must deliver support+...@ to the support mailbox
             (plus-addressing; README: "What the mail server must allow").
          3. Give it the passwords through the environment:
               export {PASSWORD_ENV}='...' MAILTICK_SMTP_PASSWORD='...'
          4. Check it, including a real login to both servers:
               mailtick check-config --connect -c /etc/mailtick/config.toml
          5. Run it (or install it as a systemd service):
               mailtick run -c /etc/mailtick/config.toml"""
    )


def keep_running_help(printer: Printer, demo: Demo, root: Path) -> None:
    imap, smtp = demo.imap, demo.smtp
    config, env = root / "config.toml", f"{PASSWORD_ENV}='{imap.password}'"
    printer.heading("Still running. Send mail to it; Ctrl-C stops everything")
    printer.block(
        f"""\
          SMTP  {HOST}:{smtp.port}, no TLS, no AUTH. Mail to {SUPPORT} and its plus-addresses
                lands in the INBOX; mail to anyone else (mailtick's answers, the agent's
                notifications) is only recorded and shown here:
                  swaks --server {HOST}:{smtp.port} --from you@example.org --to {SUPPORT} \\
                        --header 'Subject: Hello' --body 'Does this open a ticket?'
          IMAP  {HOST}:{imap.port}, no TLS, user {SUPPORT}, password {imap.password}
                (INBOX, Processed, Quarantine; any mail client will do)
          CLI   {env} mailtick tickets -c {config}
                {env} mailtick show -c {config} {PREFIX}#<number>
          log   {root / "mailtick.log"}"""
    )
    agent_help(printer, demo)


def agent_help(printer: Printer, demo: Demo) -> None:
    """How to act as the agent: reply to a notification's Reply-To from the agent's address."""
    last = demo.last_mail_to(DANA.addr, f"[{PREFIX}#")
    to = reply_address(last) if last is not None else "support+r-<ticket>-<day>-<token>@..."
    subject = f"Re: {last.subject}" if last is not None else "Re: ..."
    printer.block(
        f"""\
          AGENT {DANA.name}: {DANA.display_name} <{DANA.addr}>. Her notifications are shown above.
                A mail from {DANA.addr} to a notification's Reply-To address acts as
                {DANA.display_name}: its text goes to the customer from {SUPPORT}, and
                commands at its top (#close, #status, #assign, #note, ...) change the ticket.
                Without a valid token, or from another address, it is a customer's mail.
                  swaks --server {HOST}:{demo.smtp.port} --from {DANA.addr} \\
                        --to {to} \\
                        --header {shlex.quote("Subject: " + subject)} --body '#close'"""
    )


async def play(
    out: TextIO | None = None,
    err: TextIO | None = None,
    *,
    keep_running: bool = False,
    steps: Sequence[Step] = SCRIPT,
    wait_seconds: float = WAIT_SECONDS,
) -> DemoResult:
    """Run the demo; the result says what happened (failure is None on success)."""
    plan = Plan(steps, wait_seconds, keep_running)
    printer = Printer(out or sys.stdout, wants_color(out or sys.stdout))
    result = DemoResult()
    with tempfile.TemporaryDirectory(prefix="mailtick-demo-") as tmp:
        root = Path(tmp)
        try:
            with logging_to(root / "mailtick.log", "INFO"):
                await run_in(root, printer, plan, result)
        except DemoFailed as exc:
            result.failure = str(exc)
            report_failure(err or sys.stderr, result.failure, root / "mailtick.log")
        result.seconds = time.monotonic() - printer.started
        printer.line()
        state = "FAILED" if result.failure else "done"
        printer.line(f"mailtick demo {state} in {result.seconds:.1f} s; {root} removed.")
    return result


async def run_in(root: Path, printer: Printer, plan: Plan, result: DemoResult) -> None:
    """Servers up, config written, daemon started, script played; all stopped on the way out."""
    password = secrets.token_urlsafe(12)
    printer.line(
        printer.paint(f"mailtick demo: the real daemon, real IMAP and SMTP on {HOST}", "head")
    )
    async with servers(printer, password) as (imap, smtp):
        path = root / "config.toml"
        path.write_text(config_text(imap.port, smtp.port), encoding="utf-8")
        write_secret(root / SECRET_FILE)
        config = load_config(path, env={PASSWORD_ENV: password})
        announce(printer, imap, smtp, root)
        try:
            async with daemon_running(config) as (daemon, task):
                demo = Demo(printer, imap, smtp, daemon, task, plan.wait_seconds)
                await play_script(demo, plan.steps, result)
                await show_tickets(demo, result)
                real_mailbox_help(printer)
                if plan.keep_running:
                    keep_running_help(printer, demo, root)
                    await asyncio.wait([task])  # the daemon's SIGINT/SIGTERM handler ends it
                    printer.line()
        finally:
            result.delivered = list(smtp.delivered)


def announce(printer: Printer, imap: ImapServer, smtp: SmtpSink, root: Path) -> None:
    offered = [cap for cap in ("IDLE", "MOVE") if cap in imap.capabilities]
    offers = f"offers {' and '.join(offered)}" if offered else "offers neither IDLE nor MOVE"
    printer.block(
        f"""\
          IMAP    {HOST}:{imap.port}  pymap, in memory: {SUPPORT}, empty INBOX, {offers}
          SMTP    {HOST}:{smtp.port}  aiosmtpd; prints every mail it is given
          daemon  mailtick run -c {root / "config.toml"}  (a task in this process)
          files   {root}  (config, reply-secret, SQLite, mailtick.log; removed at the end)
          people  {JOERG.name} <{JOERG.addr}>, a customer, writes in German;
                  {DANA.display_name} <{DANA.addr}>, agent "{DANA.name}", works by mail"""
    )


def report_failure(err: TextIO, failure: str, log_path: Path) -> None:
    print(f"mailtick demo FAILED: {failure}", file=err)
    with contextlib.suppress(OSError):
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-20:]
        if tail:
            print("last lines of mailtick's log:", file=err)
            print(textwrap.indent("\n".join(tail), "  "), file=err)


def run_demo(keep_running: bool = False) -> int:
    """`mailtick demo`: 0 when every expectation of the script held, 1 otherwise."""
    try:
        return asyncio.run(play(keep_running=keep_running)).exit_code
    except BrokenPipeError:  # `mailtick demo | head`: everything is stopped and removed by now
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 1
