"""Who fetches and moves a mailbox: one instance at a time. Database (own connection), a file.

PostgreSQL (several instances share the work): the leader of a mailbox holds a session
advisory lock named after it (account + mailbox) on a connection of its own, a Lane:
one thread, one connection. A standby tries to take the lock every `try_every`
seconds. When the leader dies, even by SIGKILL, the kernel closes its connection and
PostgreSQL drops the lock, so a standby leads within `try_every` seconds plus one
IMAP login. The leader checks its lock connection every `check_every` seconds (the
same backend, so the same session and lock); when that fails it stops fetching at
once. In the moment two instances may both think they lead, nothing breaks: a
refetched mail is deduplicated and a MOVE of a mail already moved moves nothing.
Every instance sends, whoever leads (the outbox is claimed row by row, see send.py).

SQLite is for one instance: it takes an exclusive POSIX lock on `<database>.lock` at
start-up, and a second instance on the same database refuses to start. POSIX locks
belong to the process (a forked parse worker does not inherit them) and vanish with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

import peewee as pw

from mailtick.db import execute, is_connection_error
from mailtick.outcomes import Transient
from mailtick.store import Lane, Store

log = logging.getLogger("mailtick.ingest")

TRY_EVERY = 2.0  # seconds between a standby's tries: takeover within this plus a login
CHECK_EVERY = 2.0  # seconds between the leader's checks of its lock connection


class AlreadyRunning(Exception):
    """Another instance runs on this SQLite database (one line for the sysadmin)."""


class Leadership(Protocol):
    """Whether this instance may fetch and move the mailbox (watch.Watcher asks)."""

    def claim(self) -> None: ...

    async def try_lead(self) -> bool: ...

    async def lost(self) -> None: ...

    async def resign(self) -> None: ...


async def wait_to_lead(leadership: Leadership, stop: asyncio.Event, every: float) -> bool:
    """Try to lead every `every` seconds until it works (True) or `stop` is set (False)."""
    while not stop.is_set():
        if await leadership.try_lead():
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
    return False


class SoleInstance:
    """SQLite: this process is the only instance; `claim` at start-up makes sure of it."""

    def __init__(self, lock_path: Path | None) -> None:
        self.lock_path = lock_path  # None: an in-memory database, nothing to share
        self._fd: int | None = None

    def claim(self) -> None:
        """At start-up: take the lock file, or raise AlreadyRunning naming who holds it."""
        if self.lock_path is None or self._fd is not None:
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(
                f"another mailtick (pid {holder}) runs on this SQLite database "
                f"({self.lock_path} is locked); SQLite allows one instance, use PostgreSQL "
                "for several"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    async def try_lead(self) -> bool:
        return True

    async def lost(self) -> None:
        await asyncio.Event().wait()  # never: nobody else may take the mailbox

    async def resign(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the file drops the POSIX lock


def for_database(url: str, store: Store, account: str, mailbox: str) -> Leadership:
    """PostgreSQL: an advisory lock per mailbox; SQLite: one instance per database file."""
    if not url.startswith("sqlite:"):
        return AdvisoryLock(store, account, mailbox)
    path = unquote(url[len("sqlite:///") :])
    return SoleInstance(Path(f"{path}.lock") if path and path != ":memory:" else None)


def lock_key(account: str, mailbox: str) -> int:
    """The advisory lock's 64-bit key for a mailbox (PostgreSQL takes a signed bigint)."""
    digest = hashlib.sha256(f"mailtick leader {account}/{mailbox}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# The server side of the lock connection: PostgreSQL drops a session, and so the lock,
# about 11 s after the leader's host or network vanished (instead of the kernel's 2 h).
_TAKE = (
    "SELECT pg_try_advisory_lock({p}), pg_backend_pid(),"
    " set_config('tcp_keepalives_idle', '5', false),"
    " set_config('tcp_keepalives_interval', '2', false),"
    " set_config('tcp_keepalives_count', '3', false)"
)


def _take(db: pw.Database, key: int) -> int | None:
    """The lock connection's backend pid when the lock is ours now, else None."""
    taken, pid, *_ = _on_own_connection(db, _TAKE, key)
    return int(pid) if taken else None


def _backend(db: pw.Database) -> int:
    return int(_on_own_connection(db, "SELECT pg_backend_pid()")[0])


def _give_up(db: pw.Database, key: int) -> None:
    _on_own_connection(db, "SELECT pg_advisory_unlock({p})", key)


def _on_own_connection(db: pw.Database, sql: str, *params: object) -> tuple[Any, ...]:
    """One row of `sql` on this thread's connection; a broken connection is closed here,
    on its own thread, so that the next try connects afresh (a new session)."""
    try:
        return tuple(execute(sql, *params).fetchone())
    except Exception as exc:
        if is_connection_error(exc):
            with contextlib.suppress(Exception):
                db.close()
        raise


class AdvisoryLock:
    """PostgreSQL: a session advisory lock per mailbox, on a connection of its own."""

    def __init__(
        self, store: Store, account: str, mailbox: str, check_every: float = CHECK_EVERY
    ) -> None:
        self.name = f"{account}/{mailbox}"
        self.key = lock_key(account, mailbox)
        self.check_every = check_every
        self.store = store
        self.lane = Lane("mailtick-leader", asyncio.Event())  # not the watchdog's concern
        self._pid: int | None = None  # the backend holding our lock, while we lead
        self._closed = False

    @property
    def db(self) -> pw.Database:
        self.lane.db = self.store.db  # opened by then (Daemon.open)
        return self.lane.db

    def claim(self) -> None:
        """Nothing at start-up: several instances may run, one leads."""

    async def try_lead(self) -> bool:
        try:
            self._pid = await self.lane.run(_take, self.db, self.key)
        except Transient as exc:
            log.warning("cannot ask for the leadership of %s: %s", self.name, exc.reason)
            return False
        if self._pid is not None:
            log.info("leading %s (advisory lock %d)", self.name, self.key)
        return self._pid is not None

    async def lost(self) -> None:
        """Return when the lock connection is gone (its session, and so the lock, with it).
        A reconnect would be a new session without the lock: the backend pid tells."""
        while True:
            await asyncio.sleep(self.check_every)
            try:
                pid: int | None = await self.lane.run(_backend, self.db)
            except Transient as exc:
                pid, why = None, exc.reason
            else:
                why = "the lock connection was replaced"
            if pid != self._pid:
                log.warning("lost the leadership of %s: %s", self.name, why)
                self._pid = None
                return

    async def resign(self) -> None:
        """A clean stop: free the lock now so that a standby takes over at its next try.
        Closes the lock connection: call once, at the end."""
        if self._closed:
            return
        self._closed = True
        if self._pid is not None:
            with contextlib.suppress(Transient):
                await self.lane.run(_give_up, self.db, self.key)
            self._pid = None
        await self.lane.close()
