"""The one way blocking database work leaves the event loop: a single worker thread. Database.

peewee keeps one connection per thread; with one worker there is one connection,
and calls run in the order they were made. A lost connection becomes Transient.
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


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailtick-db")
        self._db: pw.Database | None = None

    async def open(self) -> pw.Database:
        self._db = await self._submit(open_database, self.url)
        return self._db

    @property
    def db(self) -> pw.Database:
        if self._db is None:
            raise RuntimeError("Store.open() has not run")
        return self._db

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn(*args, **kwargs)` on the database thread."""
        try:
            return await self._submit(fn, *args, **kwargs)
        except Exception as exc:
            if is_connection_error(exc):
                raise guard(self.db, exc) from exc
            raise

    async def _submit(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def close(self) -> None:
        if self._db is not None:
            await self._submit(self._db.close)
        self._executor.shutdown(wait=True)
