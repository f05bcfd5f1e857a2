"""`mailtick demo`: the real daemon plays a scripted conversation on embedded IMAP/SMTP servers."""

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
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from typing import Any, TextIO, TypeVar

import aioimaplib
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
from mailtick.views import list_tickets, show_ticket

T = TypeVar("T")

HOST = "127.0.0.1"
SUPPORT = "support@example.com"
SUPPORT_FROM = f"Example Support <{SUPPORT}>"
PASSWORD_ENV = "MAILTICK_IMAP_PASSWORD"
PREFIX = "MT"
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


def mail_summary(message: EmailMessage, lines: int = 3) -> list[str]:
    """Subject and the first non-blank body lines, for the timeline."""
    body = message.get_body(("plain",))
    text = body.get_content() if isinstance(body, EmailMessage) else ""
    shown = [ln.strip() for ln in str(text).splitlines() if ln.strip()][:lines]
    return [f"Subject: {message['Subject']}", *(f"| {textwrap.shorten(ln, 90)}" for ln in shown)]


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

    @property
    def text(self) -> str:
        body = self.message.get_body(("plain",))
        return str(body.get_content()) if isinstance(body, EmailMessage) else ""


class SmtpSink:
    """aiosmtpd on 127.0.0.1 in this event loop. Mail for the support address goes into the
    IMAP INBOX (so `--keep-running` works with swaks); every mail is recorded and printed."""

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
        )
        self.delivered.append(mail)
        local = any(parseaddr(r)[1].lower() == SUPPORT for r in mail.rcpt_to)
        where = " (into the INBOX)" if local else ""
        head = f"{mail.message['From']} -> {', '.join(mail.rcpt_to)}{where}"
        self.printer.event("smtp", head, mail_summary(mail.message))
        if local:
            try:
                await self.deliver_local(raw)
            except DemoFailed as exc:
                return f"451 4.3.0 {exc}"
        return "250 2.0.0 OK: delivered"


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


JOERG = Customer("joerg", "Jörg Beispiel", "joerg@kunde.example", "de")
EMMA = Customer("emma", "Emma Example", "emma@shop.example", "en")


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
    msg["To"] = Address("Example Support", addr_spec=SUPPORT)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid(domain=sender.domain)
    if answers:
        msg["In-Reply-To"] = answers[-1]
        msg["References"] = " ".join(answers)
    msg.set_content(body)
    return msg


def quoted(intro: str, text: str) -> str:
    return intro + "\n" + "\n".join(f"> {ln}".rstrip() for ln in text.strip().splitlines())


JOERG_SUBJECT = "Mails an unsere Kunden kommen nicht an"
JOERG_FIRST = """\
Hallo,

seit heute Morgen kommen unsere Mails an Kunden nicht mehr an. Fast jede Mail
kommt nach ein paar Minuten mit diesem Fehler zurück:

  550 5.7.1 <einkauf@partner.example>: Message rejected: SPF check failed for kunde.example

Betroffen sind alle Absender @kunde.example, auch Rechnungen und Angebote.
Können Sie sich das bitte dringend ansehen?

Viele Grüße
Jörg Beispiel
Beispiel & Söhne GmbH
"""
JOERG_DETAILS = """\
Hallo,

hier noch die Einzelheiten, die Sie sicher brauchen:

- seit: heute, ca. 08:15 Uhr
- Absender: rechnung@kunde.example und vertrieb@kunde.example
- Empfänger zum Beispiel: einkauf@partner.example, info@lieferant.example
- Gestern haben wir den DNS-Eintrag für unseren neuen Newsletter-Dienst geändert.

Mails innerhalb der Firma kommen an, nur nach außen nicht.

Viele Grüße
Jörg Beispiel
"""
EMMA_SUBJECT = "Invoice PDF missing from order confirmations"
EMMA_FIRST = """\
Hi,

since yesterday our order confirmation mails go out without the invoice PDF.
The mail itself looks fine, only the attachment is missing. Nothing changed on
our side as far as I know; order 4711 is an example.

Could you have a look, please?

Thanks,
Emma Example
Example Shop Ltd.
"""


Action = Callable[["Demo"], Awaitable[None]]
Expectation = Callable[["Demo"], Awaitable[str]]  # what was confirmed; raises DemoFailed


@dataclass(frozen=True)
class Step:
    title: str
    action: Action
    expect: Expectation


def writes(customer: Customer, subject: str, body: str) -> Action:
    async def act(demo: Demo) -> None:
        await demo.deliver(customer, customer_mail(customer, subject, body))

    return act


def answers_ack(customer: Customer, reply_word: str, body: str) -> Action:
    """The customer hits "reply" on the acknowledgement, quoting it."""

    async def act(demo: Demo) -> None:
        ack = demo.acks[customer.key]
        earlier = demo.written[customer.key]["Message-ID"]
        intro = f"{ack.message['Date']} schrieb {ack.message['From']}:"
        mail = customer_mail(
            customer,
            f"{reply_word} {ack.message['Subject']}",
            body + "\n" + quoted(intro, ack.text),
            answers=(earlier, ack.message["Message-ID"]),
        )
        await demo.deliver(customer, mail)

    return act


def acknowledged(customer: Customer) -> Expectation:
    """A new ticket for the customer and an acknowledgement in their language naming it."""

    async def expect(demo: Demo) -> str:
        async def ack_sent() -> Delivered | None:
            return demo.new_mail_to(customer)

        ack = await demo.wait_until(ack_sent, f"an acknowledgement to {customer.addr}")
        number = check_ack(ack, customer)
        detail = await demo.ticket(number)
        if detail is None or detail["requester"] != customer.addr:
            raise DemoFailed(f"the ack names {PREFIX}#{number}, but they have no such ticket")
        if detail["language"] != customer.language:
            raise DemoFailed(f"{PREFIX}#{number} got language {detail['language']!r}")
        demo.acks[customer.key], demo.numbers[customer.key] = ack, number
        language = LANGUAGE_NAMES[customer.language]
        return f"new ticket {PREFIX}#{number}, acknowledged from {SUPPORT} in {language}"

    return expect


def check_ack(ack: Delivered, customer: Customer) -> str:
    """The ticket number an acknowledgement names; DemoFailed if it is not a proper one."""
    subject = str(ack.message["Subject"])
    found = re.search(rf"\[{PREFIX}#(\d+)\]", subject)
    language = ack.message["Content-Language"]  # optional header; checked when present
    problems = [
        f"envelope sender {ack.mail_from!r}" if ack.mail_from != SUPPORT else "",
        f"From: {ack.message['From']}" if parseaddr(str(ack.message["From"]))[1] != SUPPORT else "",
        f"no [{PREFIX}#...] in subject {subject!r}" if found is None else "",
        "ticket number missing from the body" if found and found[1] not in ack.text else "",
        f"Content-Language {language}, expected {customer.language}"
        if language is not None and language != customer.language
        else "",
    ]
    if found is None or any(problems):
        raise DemoFailed("unexpected acknowledgement: " + "; ".join(p for p in problems if p))
    return found[1]


def threaded(customer: Customer, messages: int) -> Expectation:
    """The customer's last mail joined their ticket: no new ticket, no new acknowledgement."""

    async def expect(demo: Demo) -> str:
        number = demo.numbers[customer.key]

        async def grown() -> dict[str, Any] | None:
            detail = await demo.ticket(number)
            return detail if detail is not None and detail["messages"] >= messages else None

        detail = await demo.wait_until(grown, f"{PREFIX}#{number} to hold {messages} messages")
        tickets = await demo.query(list_tickets, demo.daemon.store.db)
        if len(tickets) != len(demo.numbers) or demo.new_mail_to(customer) is not None:
            raise DemoFailed(f"a new ticket or acknowledgement instead of threading into {number}")
        if detail["messages"] != messages:
            raise DemoFailed(f"{PREFIX}#{number} holds {detail['messages']} messages")
        rule = detail["thread"][-1]["thread_rule"]
        return f"threaded into {PREFIX}#{number} by {rule}: {messages} messages, no new ack"

    return expect


SCRIPT: tuple[Step, ...] = (
    Step(
        "Jörg writes: mails to his customers bounce",
        writes(JOERG, JOERG_SUBJECT, JOERG_FIRST),
        acknowledged(JOERG),
    ),
    Step(
        "Jörg answers the acknowledgement with details",
        answers_ack(JOERG, "AW:", JOERG_DETAILS),
        threaded(JOERG, messages=3),
    ),
    Step(
        "Emma (English) writes about something else",
        writes(EMMA, EMMA_SUBJECT, EMMA_FIRST),
        acknowledged(EMMA),
    ),
)


# --- the run: servers, daemon, script ---------------------------------------------------------


@dataclass
class Demo:
    printer: Printer
    imap: ImapServer
    smtp: SmtpSink
    daemon: Daemon
    daemon_task: asyncio.Task[None]
    wait_seconds: float = WAIT_SECONDS
    mark: int = 0  # SMTP deliveries before the current step
    written: dict[str, EmailMessage] = field(default_factory=dict)  # customer -> last mail
    acks: dict[str, Delivered] = field(default_factory=dict)  # customer -> acknowledgement
    numbers: dict[str, str] = field(default_factory=dict)  # customer -> ticket number

    async def deliver(self, customer: Customer, mail: EmailMessage) -> None:
        await self.deliver_raw(mail.as_bytes())
        self.written[customer.key] = mail
        self.printer.event("imap", f"{mail['From']} -> {SUPPORT} INBOX", mail_summary(mail))

    async def deliver_raw(self, raw: bytes) -> None:
        await append_to_inbox(self.imap.port, self.imap.user, self.imap.password, raw)

    def new_mail_to(self, customer: Customer) -> Delivered | None:
        mails = self.smtp.delivered[self.mark :]
        return next((m for m in mails if customer.addr in m.rcpt_to), None)

    async def query(self, fn: Callable[..., T], *args: Any) -> T:
        """Read the database on the daemon's own database thread (its one connection)."""
        self.check_daemon()
        return await self.daemon.store.run(fn, *args)

    async def ticket(self, number: str) -> dict[str, Any] | None:
        return await self.query(show_ticket, self.daemon.store.db, number)

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
    numbers: dict[str, str] = field(default_factory=dict)  # customer key -> ticket number
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
        default_language = "en"

        [log]
        level = "INFO"
        """)


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
async def daemon_running(config: Config) -> AsyncIterator[tuple[Daemon, asyncio.Task[None]]]:
    """`mailtick run` as a task of this event loop; stopped (and awaited) on the way out."""
    daemon = Daemon(config)
    task = asyncio.create_task(daemon.run(), name="mailtick-daemon")
    try:
        yield daemon, task
    finally:
        crash = await stop_daemon(daemon, task)
    if crash is not None:  # reached only when the demo itself went well
        raise DemoFailed(f"the daemon failed: {crash!r}")


async def stop_daemon(daemon: Daemon, task: asyncio.Task[None]) -> BaseException | None:
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
            printer.verdict(True, await step.expect(demo))
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
          2. Give it the passwords through the environment:
               export {PASSWORD_ENV}='...' MAILTICK_SMTP_PASSWORD='...'
          3. Check it, including a real login to both servers:
               mailtick check-config --connect -c /etc/mailtick/config.toml
          4. Run it (or install it as a systemd service):
               mailtick run -c /etc/mailtick/config.toml"""
    )


def keep_running_help(printer: Printer, demo: Demo, root: Path) -> None:
    imap, smtp = demo.imap, demo.smtp
    config, env = root / "config.toml", f"{PASSWORD_ENV}='{imap.password}'"
    printer.heading("Still running. Send mail to it; Ctrl-C stops everything")
    printer.block(
        f"""\
          SMTP  {HOST}:{smtp.port}, no TLS, no AUTH. Mail to {SUPPORT} lands in the INBOX,
                mail to anyone else (mailtick's answers) is only recorded and shown here:
                  swaks --server {HOST}:{smtp.port} --from you@example.org --to {SUPPORT} \\
                        --header 'Subject: Hello' --body 'Does this open a ticket?'
          IMAP  {HOST}:{imap.port}, no TLS, user {SUPPORT}, password {imap.password}
                (INBOX, Processed, Quarantine; any mail client will do)
          CLI   {env} mailtick tickets -c {config}
                {env} mailtick show -c {config} {PREFIX}#<number>
          log   {root / "mailtick.log"}"""
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
          files   {root}  (config, SQLite database, mailtick.log; removed at the end)"""
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
    return asyncio.run(play(keep_running=keep_running)).exit_code
