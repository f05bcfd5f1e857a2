"""Demo: embedded IMAP (pymap, in memory) and SMTP (aiosmtpd) servers. Touches loopback only.

Mail the SMTP server gets for the support address (and its plus-addresses) is appended
to the IMAP INBOX, as an MTA's local delivery would; all other mail is only recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any

import aioimaplib
import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session
from proxyprotocol.reader import ProxyProtocolReader
from proxyprotocol.sock import SocketInfo
from pymap.backend.dict import Config as DictConfig
from pymap.backend.dict import Login
from pymap.concurrent import Subsystem
from pymap.imap import IMAPServer
from pymap.user import Passwords, UserMetadata
from pysasl.hashing import BuiltinHash

from mailtick.demo.common import HOST, SUPPORT, DemoFailed
from mailtick.demo.printer import Printer, mail_summary, parse_mail, short

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
