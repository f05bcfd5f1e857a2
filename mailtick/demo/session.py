"""Demo: a running demo as the script sees it. Reads the database on the daemon's thread.

The servers, the daemon, the mail sent so far, and `wait_until` for what mailtick should do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, TypeVar

from mailtick.app import Daemon
from mailtick.config import Config
from mailtick.db import Outbox
from mailtick.demo.common import SUPPORT, WAIT_SECONDS, DemoFailed, Interrupted, tag
from mailtick.demo.people import Customer
from mailtick.demo.printer import Printer, mail_summary
from mailtick.demo.servers import Delivered, ImapServer, SmtpSink, append_to_inbox
from mailtick.views import show_ticket

T = TypeVar("T")


def pending_mail() -> int:
    """Mail in mailtick's outbox that was not sent yet (or failed for now)."""
    return int(Outbox.select().where(Outbox.status == "pending").count())


@dataclass
class Demo:
    """The running demo the script acts through: the servers, the daemon, what was sent."""

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
        return await self.query(show_ticket, number)

    async def outbox_empty(self) -> None:
        async def empty() -> bool | None:
            return True if await self.query(pending_mail) == 0 else None

        await self.wait_until(empty, "mailtick's outbox to empty")

    async def stored(self, number: str, mail: EmailMessage) -> dict[str, Any]:
        """`mail` as `mailtick show` lists it in ticket `number`, once it is there."""
        message_id = str(mail["Message-ID"])

        async def entry() -> dict[str, Any] | None:
            thread = (await self.ticket(number) or {}).get("thread", [])
            return next((m for m in thread if m["message_id"] == message_id), None)

        return await self.wait_until(entry, f"{message_id} in {tag(number)}")

    def check_daemon(self) -> None:
        """DemoFailed if the daemon died; Interrupted if its signal handler stopped it."""
        task = self.daemon_task
        if not task.done():
            return
        if task.cancelled():
            raise DemoFailed("the daemon was cancelled")
        error = task.exception()
        if error is not None:
            raise DemoFailed(f"the daemon died: {error!r}")
        raise Interrupted("the daemon was stopped")  # only SIGINT/SIGTERM (or SIGHUP) do that

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
