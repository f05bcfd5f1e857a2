"""Stage `send`: drain the outbox over SMTP (aiosmtplib); retry 4xx, record 5xx. Network + DB.

Rows are claimed one at a time with a lease before sending (FOR UPDATE SKIP LOCKED on
PostgreSQL), so several instances sharing one database all send, and never the same row
twice; a row is marked sent the moment the server accepted it, before the next mail goes
out, in the commit that claims the next row. An SMTP outage only delays mail: ingest
never waits for this stage.
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
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiosmtplib
import peewee as pw

from mailtick.config import SmtpConfig
from mailtick.db import execute, utcnow, write_transaction
from mailtick.ingest.imap import tls_context
from mailtick.outcomes import Transient
from mailtick.store import Store

log = logging.getLogger("mailtick.send")

LEASE = timedelta(minutes=10)
STOP_SENDING = 2.0  # seconds of sending after a stop (well inside app.STOP_GRACE)
SHARED_POLL = 0.5  # seconds: how soon a sender finds mail another instance queued


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


@dataclass(frozen=True)
class Mark:
    """What became of a row: sent, deferred (pending again from `retry_at`) or failed."""

    row_id: int
    status: str  # "sent" | "pending" (deferred) | "failed"
    note: str = ""  # sent: the refused recipients; else the error
    retry_at: datetime | None = None


_CLAIM = (
    "UPDATE outbox SET claimed_until = {p}, claim_token = {p} WHERE id = ("
    "SELECT id FROM outbox WHERE status = 'pending' AND next_attempt_at <= {p}"
    " AND (claimed_until IS NULL OR claimed_until < {p})"
    " ORDER BY next_attempt_at, id LIMIT 1%s) RETURNING id"
)
_QUEUED = (
    "SELECT m.message_id, o.mail_from, o.rcpt_to, m.data, o.attempts"
    " FROM outbox o JOIN message m ON m.id = o.message_id WHERE o.id = {p}"
)
_SENT = (
    "UPDATE outbox SET status = 'sent', sent_at = {p}, attempts = attempts + 1,"
    " claimed_until = NULL, last_error = {p} WHERE id = {p}"
)
_DEFERRED = (
    "UPDATE outbox SET attempts = attempts + 1, last_error = {p}, next_attempt_at = {p},"
    " claimed_until = NULL WHERE id = {p}"
)
_FAILED = (
    "UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_error = {p},"
    " claimed_until = NULL WHERE id = {p}"
)


def finish_and_claim(
    db: pw.Database, marks: list[Mark], now: datetime, claim: bool
) -> Queued | None:
    """ONE commit: the outcome of the mails just handled, and the claim of the next due row
    (None: nothing due). The sender calls this after each mail, before the next goes out,
    so a kill re-sends at most the one mail in flight. The commit needs no fsync: it is
    durable against a crash of this process, which is what a mark guards against (after a
    power loss a mail may go out twice, never not at all)."""
    with _without_fsync(db), write_transaction(db):
        if isinstance(db, pw.PostgresqlDatabase):
            execute("SET LOCAL synchronous_commit TO OFF")
        for mark in marks:
            _write(db, mark, now)
        return _claim_one(db, now) if claim else None


def _write(db: pw.Database, mark: Mark, now: datetime) -> None:
    if mark.status == "sent":
        execute(_SENT, now, mark.note, mark.row_id)
    elif mark.status == "pending":
        execute(_DEFERRED, mark.note, mark.retry_at, mark.row_id)
    else:
        execute(_FAILED, mark.note, mark.row_id)


def _claim_one(db: pw.Database, now: datetime) -> Queued | None:
    """Lease the next due row to this sender. PostgreSQL skips rows another instance is
    claiming this very moment (FOR UPDATE SKIP LOCKED), so every instance sends at once;
    SQLite's write lock serialises the claims."""
    lock = " FOR UPDATE SKIP LOCKED" if isinstance(db, pw.PostgresqlDatabase) else ""
    found = execute(_CLAIM % lock, now + LEASE, claim_token(), now, now).fetchone()
    if found is None:
        return None
    message_id, mail_from, rcpt_to, data, attempts = execute(_QUEUED, found[0]).fetchone()
    return Queued(
        id=found[0],
        message_id=message_id,
        mail_from=mail_from,
        rcpt_to=tuple(a for a in rcpt_to.split(",") if a),
        raw=bytes(data),
        attempts=attempts,
    )


@contextlib.contextmanager
def _without_fsync(db: pw.Database) -> Iterator[None]:
    """SQLite: synchronous=NORMAL for the transactions inside (WAL: a commit survives the
    process, not a power loss; the next FULL commit syncs it too), FULL again afterwards."""
    if not isinstance(db, pw.SqliteDatabase):
        yield
        return
    db.pragma("synchronous", 1)
    try:
        yield
    finally:
        db.pragma("synchronous", 2)


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
    release = (
        "UPDATE outbox SET claimed_until = NULL, claim_token = NULL"
        " WHERE status = 'pending' AND claim_token = {p}"
    )
    gone = [str(token) for (token,) in execute(held).fetchall() if _gone(str(token))]
    if not gone:  # the usual case: a read, no write lock
        return 0
    with write_transaction(db):
        return sum(int(execute(release, token).rowcount) for token in gone)


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
        self._stopped_at: float | None = None  # loop time when the stop was first seen

    def notify(self) -> None:
        """Called after a commit that queued mail: send now rather than at the next tick."""
        self.wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._loop(stop)
        finally:  # also when cancelled at the end of the stop grace
            with contextlib.suppress(Transient):
                await self.store.sending.run(release_mine, self.store.db)

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.wake.clear()
            try:
                # every round: another instance on this host may have died with a row leased
                if freed := await self.store.sending.run(release_orphans, self.store.db):
                    log.warning("freed %d outbox rows leased by a sender that died", freed)
                counts = await self.drain(stop)
                wait = await self._seconds_to_next_due()
                if counts.deferred:  # the server is unwell: not before the first retry
                    wait = max(wait, self.config.retry_min)
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
        """Until the next row is due. On a shared database (PostgreSQL) the other instances'
        rows are looked for every SHARED_POLL seconds: only our own commits wake us."""
        longest = 60.0 if self.store.url.startswith("sqlite") else SHARED_POLL
        due = await self.store.sending.run(next_due)
        if due is None:
            return longest
        return max(0.05, min(longest, (due - utcnow()).total_seconds()))

    async def drain(self, stop: asyncio.Event | None = None) -> SendCounts:
        """Send every due mail, one claimed row at a time, until none is due, `stop` is set
        or a mail was deferred (the server is unwell: the rest waits for the next round)."""
        counts = SendCounts()
        client = smtp_client(self.config)
        try:
            item = await self._finish_and_claim([], claim=True)
            while item is not None:
                mark = await self._send_one(client, item, counts)
                more = mark.status != "pending" and self._sending_on(stop)
                item = await self._finish_and_claim([mark], claim=more)
        finally:
            await _quit(client)
            for name in ("sent", "deferred", "failed"):
                setattr(self.totals, name, getattr(self.totals, name) + getattr(counts, name))
        return counts

    def _sending_on(self, stop: asyncio.Event | None) -> bool:
        """After a stop, what is due goes out for STOP_SENDING seconds more; the drain then
        ends between two mails, not cancelled inside one (which would send it again)."""
        if stop is None or not stop.is_set():
            return True
        now = asyncio.get_running_loop().time()
        if self._stopped_at is None:
            self._stopped_at = now
        return now - self._stopped_at < STOP_SENDING

    async def _finish_and_claim(self, marks: list[Mark], claim: bool) -> Queued | None:
        db = self.store.db
        return await self.store.sending.run(finish_and_claim, db, marks, utcnow(), claim)

    async def _send_one(self, client: aiosmtplib.SMTP, item: Queued, counts: SendCounts) -> Mark:
        """Send one mail (connecting first if need be); what became of it, to be written
        before the next mail goes out."""
        try:
            if not client.is_connected:
                await client.connect()
                if self.config.username:
                    await client.login(self.config.username, self.config.password)
            refused, _ = await client.sendmail(item.mail_from, list(item.rcpt_to), item.raw)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            permanent, text = _describe(exc)
            if permanent:
                return self._fail(item, text, counts)
            return self._defer(item, text, counts)
        note = "; ".join(f"{rcpt}: {resp.code} {resp.message}" for rcpt, resp in refused.items())
        counts.sent += 1
        log.info("sent %s to %s", item.message_id, ",".join(item.rcpt_to))
        return Mark(item.id, "sent", note)

    def _defer(self, item: Queued, error: str, counts: SendCounts) -> Mark:
        if item.attempts + 1 >= self.config.max_attempts:
            return self._fail(item, f"gave up after {item.attempts + 1} attempts: {error}", counts)
        delay = min(self.config.retry_max, self.config.retry_min * 2**item.attempts)
        delay *= random.uniform(0.8, 1.2)
        counts.deferred += 1
        log.warning(
            "deferred %s (attempt %d): %s; retry in %.0fs",
            item.message_id,
            item.attempts + 1,
            error,
            delay,
        )
        return Mark(item.id, "pending", error, utcnow() + timedelta(seconds=delay))

    def _fail(self, item: Queued, error: str, counts: SendCounts) -> Mark:
        counts.failed += 1
        log.error("failed %s to %s: %s", item.message_id, ",".join(item.rcpt_to), error)
        return Mark(item.id, "failed", error)


async def _quit(client: aiosmtplib.SMTP) -> None:
    if client.is_connected:
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            client.close()
