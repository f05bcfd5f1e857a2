"""Stage `send`: drain the outbox over SMTP (aiosmtplib); retry 4xx, record 5xx. Network + DB.

Rows are claimed with a lease before sending, so several instances sharing one
PostgreSQL database never send the same row twice; a row is marked sent the
moment the server accepted it. An SMTP outage only delays mail: ingest never
waits for this stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiosmtplib
import peewee as pw

from mailtick.config import SmtpConfig
from mailtick.db import Message, Outbox, execute, utcnow, write_transaction
from mailtick.ingest.imap import tls_context
from mailtick.outcomes import Transient
from mailtick.store import Store

log = logging.getLogger("mailtick.send")

LEASE = timedelta(minutes=10)
BATCH = 50


@dataclass(frozen=True)
class Queued:
    id: int
    message_id: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    raw: bytes
    attempts: int


@dataclass
class SendCounts:
    sent: int = 0
    deferred: int = 0
    failed: int = 0


# -- database side (runs on the store thread) ------------------------------------


def claim_due(db: pw.Database, now: datetime, limit: int = BATCH) -> list[Queued]:
    """Lease up to `limit` due rows to this sender in one transaction. The UPDATE re-checks
    the lease, so a row another instance leased in the meantime is not taken twice."""
    token = claim_token()
    free = (Outbox.status == "pending") & (
        Outbox.claimed_until.is_null() | (Outbox.claimed_until < now)
    )
    with write_transaction(db):
        due = [
            row.id
            for row in Outbox.select(Outbox.id)
            .where(free & (Outbox.next_attempt_at <= now))
            .order_by(Outbox.next_attempt_at, Outbox.id)
            .limit(limit)
        ]
        if not due:
            return []
        Outbox.update(claimed_until=now + LEASE, claim_token=token).where(
            free & Outbox.id.in_(due)
        ).execute()
    rows = (
        Outbox.select(Outbox, Message)
        .join(Message)
        .where(Outbox.claim_token == token)
        .order_by(Outbox.next_attempt_at, Outbox.id)
    )
    return [
        Queued(
            id=row.id,
            message_id=row.message.message_id,
            mail_from=row.mail_from,
            rcpt_to=tuple(a for a in row.rcpt_to.split(",") if a),
            raw=bytes(row.message.data),
            attempts=row.attempts,
        )
        for row in rows
    ]


def mark_sent(db: pw.Database, row_id: int, note: str = "") -> None:
    sent = (
        "UPDATE outbox SET status = 'sent', sent_at = {p}, attempts = attempts + 1,"
        " claimed_until = NULL, last_error = {p} WHERE id = {p}"
    )
    with write_transaction(db):
        execute(sent, utcnow(), note, row_id)


def mark_deferred(db: pw.Database, row_id: int, error: str, retry_at: datetime) -> None:
    with write_transaction(db):
        Outbox.update(
            attempts=Outbox.attempts + 1,
            last_error=error,
            next_attempt_at=retry_at,
            claimed_until=None,
        ).where(Outbox.id == row_id).execute()


def mark_failed(db: pw.Database, row_id: int, error: str) -> None:
    with write_transaction(db):
        Outbox.update(
            status="failed", attempts=Outbox.attempts + 1, last_error=error, claimed_until=None
        ).where(Outbox.id == row_id).execute()


def next_due() -> datetime | None:
    """When the next pending row may be sent: its retry time, or the end of its lease."""
    due = (
        "SELECT MIN(CASE WHEN claimed_until IS NOT NULL AND claimed_until > next_attempt_at"
        " THEN claimed_until ELSE next_attempt_at END) FROM outbox WHERE status = 'pending'"
    )
    [value] = execute(due).fetchone()
    if isinstance(value, str):  # SQLite hands back text for an aggregate
        return datetime.fromisoformat(value)
    return value  # type: ignore[no-any-return]


# A lease names its holder: this host, this process, this start. After a crash, the
# restarted daemon on the same host frees the leases of processes that no longer run,
# so their mail goes out at once instead of after LEASE. (A lease held by another host
# of a PostgreSQL cluster simply runs out.)
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_START = uuid.uuid4().hex[:8]


def claim_token() -> str:
    """host:pid:start:claim, at most 32 characters (pids have at most 7 digits)."""
    return f"{_HOST}:{os.getpid()}:{_START}:{uuid.uuid4().hex[:6]}"


def _gone(token: str) -> bool:
    """A lease of this host whose process is dead, or of an earlier process with our pid."""
    host, pid_text, start = ([*token.split(":"), "", ""])[:3]
    if host != _HOST or not pid_text.isdigit():
        return False
    if int(pid_text) == os.getpid():
        return start != _START
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def release_mine(db: pw.Database) -> int:
    """Free this process's leases (a clean stop): another instance may send them at once."""
    mine = f"{_HOST}:{os.getpid()}:{_START}:%"
    release = (
        "UPDATE outbox SET claimed_until = NULL, claim_token = NULL"
        " WHERE status = 'pending' AND claim_token LIKE {p}"
    )
    with write_transaction(db):
        return int(execute(release, mine).rowcount)


def release_orphans(db: pw.Database) -> int:
    """Free the leases that crashed senders on this host left behind."""
    held = (
        "SELECT DISTINCT claim_token FROM outbox"
        " WHERE status = 'pending' AND claim_token IS NOT NULL"
    )
    release = "UPDATE outbox SET claimed_until = NULL, claim_token = NULL WHERE claim_token = {p}"
    freed = 0
    with write_transaction(db):
        for (token,) in execute(held).fetchall():
            if _gone(str(token)):
                freed += execute(release, token).rowcount
    return freed


# -- network side -------------------------------------------------------------------


def smtp_client(cfg: SmtpConfig) -> aiosmtplib.SMTP:
    """An unconnected client for the configured server and security."""
    return aiosmtplib.SMTP(
        hostname=cfg.host,
        port=cfg.port,
        timeout=cfg.timeout,
        use_tls=cfg.security == "tls",
        start_tls=cfg.security == "starttls",
        tls_context=tls_context(cfg.tls) if cfg.security != "none" else None,
    )


def _describe(exc: Exception) -> tuple[bool, str]:
    """(permanent?, text) for an aiosmtplib error; only a 5xx answer is permanent."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        text = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        return all(500 <= c < 600 for c in codes), text
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return 500 <= exc.code < 600, f"{exc.code} {exc.message}"
    return False, f"{type(exc).__name__}: {exc}"


class Sender:
    def __init__(self, config: SmtpConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.wake = asyncio.Event()
        self.totals = SendCounts()  # since start-up, for `run --once` and the logs

    def notify(self) -> None:
        """Called after a commit that queued mail: send now rather than at the next tick."""
        self.wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            if freed := await self.store.sending.run(release_orphans, self.store.db):
                log.warning("freed %d outbox rows leased by a sender that died", freed)
        except Transient as exc:
            log.warning("outbox unavailable: %s", exc.reason)
        try:
            await self._loop(stop)
        finally:  # also when cancelled at the end of the stop grace
            with contextlib.suppress(Transient):
                await self.store.sending.run(release_mine, self.store.db)

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.wake.clear()
            try:
                await self.drain()
                wait = await self._seconds_to_next_due()
            except Transient as exc:
                log.warning("outbox unavailable: %s", exc.reason)
                wait = self.config.retry_min
            waiters = {asyncio.ensure_future(self.wake.wait()), asyncio.ensure_future(stop.wait())}
            _, pending = await asyncio.wait(
                waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()

    async def _seconds_to_next_due(self) -> float:
        due = await self.store.sending.run(next_due)
        if due is None:
            return 60.0
        return max(0.05, min(60.0, (due - utcnow()).total_seconds()))

    async def drain(self) -> SendCounts:
        """Send every due mail; returns what happened. Stops early only on connection loss."""
        counts = SendCounts()
        while batch := await self.store.sending.run(claim_due, self.store.db, utcnow()):
            await self._send_batch(batch, counts)
            if counts.deferred:
                break  # the server is unwell: leave the rest for the next round
        for name in ("sent", "deferred", "failed"):
            setattr(self.totals, name, getattr(self.totals, name) + getattr(counts, name))
        return counts

    async def _send_batch(self, batch: list[Queued], counts: SendCounts) -> None:
        client = smtp_client(self.config)
        try:
            await client.connect()
            if self.config.username:
                await client.login(self.config.username, self.config.password)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            for item in batch:
                await self._defer(item, f"connect: {_describe(exc)[1]}", counts)
            return
        marks: list[asyncio.Future[None]] = []
        try:
            for item in batch:
                await self._send_one(client, item, counts, marks)
        finally:
            await asyncio.gather(*marks)
            if client.is_connected:
                try:
                    await client.quit()
                except (aiosmtplib.SMTPException, OSError, TimeoutError):
                    client.close()

    async def _send_one(
        self,
        client: aiosmtplib.SMTP,
        item: Queued,
        counts: SendCounts,
        marks: list[asyncio.Future[None]],
    ) -> None:
        """Send one mail. Recording it as sent runs on the store thread while the next
        mail goes out; the store runs the marks in order, before anything queued later."""
        try:
            if not client.is_connected:
                await client.connect()
                if self.config.username:
                    await client.login(self.config.username, self.config.password)
            refused, _ = await client.sendmail(item.mail_from, list(item.rcpt_to), item.raw)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            permanent, text = _describe(exc)
            if permanent:
                await self._fail(item, text, counts)
            else:
                await self._defer(item, text, counts)
            return
        note = "; ".join(f"{rcpt}: {resp.code} {resp.message}" for rcpt, resp in refused.items())
        marks.append(
            asyncio.ensure_future(self.store.sending.run(mark_sent, self.store.db, item.id, note))
        )
        counts.sent += 1
        log.info("sent %s to %s", item.message_id, ",".join(item.rcpt_to))

    async def _defer(self, item: Queued, error: str, counts: SendCounts) -> None:
        if item.attempts + 1 >= self.config.max_attempts:
            await self._fail(item, f"gave up after {item.attempts + 1} attempts: {error}", counts)
            return
        delay = min(self.config.retry_max, self.config.retry_min * 2**item.attempts)
        delay *= random.uniform(0.8, 1.2)
        retry_at = utcnow() + timedelta(seconds=delay)
        await self.store.sending.run(mark_deferred, self.store.db, item.id, error, retry_at)
        counts.deferred += 1
        log.warning(
            "deferred %s (attempt %d): %s; retry in %.0fs",
            item.message_id,
            item.attempts + 1,
            error,
            delay,
        )

    async def _fail(self, item: Queued, error: str, counts: SendCounts) -> None:
        await self.store.sending.run(mark_failed, self.store.db, item.id, error)
        counts.failed += 1
        log.error("failed %s to %s: %s", item.message_id, ",".join(item.rcpt_to), error)
