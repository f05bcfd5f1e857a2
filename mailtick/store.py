"""The one way blocking database work leaves the event loop: worker threads (lanes). Database.

peewee keeps one connection per thread; each lane is one thread with one connection,
and the calls on a lane run in the order they were made. A lost connection becomes
Transient.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import peewee as pw

from mailtick.db import guard, is_connection_error, open_database

P = ParamSpec("P")
T = TypeVar("T")


class Lane:
    """One worker thread with its own database connection (peewee keeps one per thread).
    `usable` is set after every call that reached the database and cleared when the
    connection failed: systemd's watchdog reads it (notify.keep_alive)."""

    def __init__(self, name: str, usable: asyncio.Event) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.db: pw.Database | None = None
        self.usable = usable

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn(*args, **kwargs)` on this lane's thread; a lost connection is Transient,
        and the broken connection is dropped on this lane's thread (peewee keeps one per
        thread: dropping it anywhere else leaves it in place, and every later call fails
        with "connection already closed"). The next call connects afresh."""
        try:
            result = await self.submit(fn, *args, **kwargs)
        except Exception as exc:
            if is_connection_error(exc) and self.db is not None:
                self.usable.clear()
                raise await self.submit(guard, self.db, exc) from exc
            raise
        self.usable.set()
        return result

    async def submit(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def close(self) -> None:
        if self.db is not None:
            await self.submit(self.db.close)
        self._executor.shutdown(wait=True)


class Store:
    """The ingest lane (`run`) and a second lane for the sender (`sending`), so that the
    sender's small commits (each fsynced) overlap ingest's work instead of queueing
    behind it. SQLite serialises the two writers with its lock (busy_timeout)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.usable = asyncio.Event()  # the database answers (see Lane)
        self._main = Lane("mailtick-db", self.usable)
        self.sending = Lane("mailtick-db-send", self.usable)
        self._db: pw.Database | None = None

    async def open(self) -> pw.Database:
        self._db = await self._main.submit(open_database, self.url)
        self._main.db = self.sending.db = self._db
        return self._db

    @property
    def db(self) -> pw.Database:
        if self._db is None:
            raise RuntimeError("Store.open() has not run")
        return self._db

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn(*args, **kwargs)` on the ingest lane's thread."""
        return await self._main.run(fn, *args, **kwargs)

    async def close(self) -> None:
        await self.sending.close()
        await self._main.close()
