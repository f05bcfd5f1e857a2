"""Stage `parse` for batches: worker processes, so parsing overlaps recording. Touches nothing.

Parsing is pure-Python CPU work; on the database thread it would take turns with
recording under the GIL. With `imap.parse_workers` > 0, batches of at least
MIN_BATCH mails are parsed in forked worker processes while the database thread
records the previous batch. Single mails (IDLE wake-ups) are parsed inline: no
round trip to a worker for one mail.

The pool is forked at start-up, after the language model is loaded, so workers
inherit it and start in milliseconds. A worker that dies turns the batch into a
Transient outcome (retry) and the pool is started afresh.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from mailtick.ingest.parse import parse, warm_up
from mailtick.mail import ParsedMail
from mailtick.outcomes import Rejected, Transient

log = logging.getLogger("mailtick.ingest")

MIN_BATCH = 8
PR_SET_PDEATHSIG = 1  # prctl(2)
Parsed = ParsedMail | Rejected


def parse_many(datas: Sequence[bytes], default_language: str) -> list[Parsed]:
    """Parse each mail; a mail mail-parser cannot read becomes its Rejected outcome."""
    results: list[Parsed] = []
    for data in datas:
        try:
            results.append(parse(data, default_language))
        except Rejected as exc:
            results.append(exc)
        except Exception as exc:  # a parser bug must cost one mail (quarantined), not the daemon
            results.append(Rejected(f"parser error: {type(exc).__name__}: {exc}"))
    return results


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the daemon dies, even by SIGKILL, so no
    orphaned parser outlives a crash (systemd would clean up; other supervisors don't)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: nothing to arrange
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


class ParsePool:
    def __init__(self, workers: int, default_language: str) -> None:
        self.workers = workers
        self.default_language = default_language
        self._pool: ProcessPoolExecutor | None = None

    def wanted(self, count: int) -> bool:
        return self.workers > 0 and count >= MIN_BATCH

    def start(self) -> None:
        """Fork the workers now (call after warm_up, before the daemon gets busy)."""
        if self.workers == 0 or self._pool is not None:
            return
        context = multiprocessing.get_context("fork")
        self._pool = ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=_die_with_parent
        )
        for _ in range(self.workers):  # the executor forks on demand: demand it now
            self._pool.submit(warm_up)

    async def parse(self, datas: Sequence[bytes]) -> list[Parsed]:
        """Parse a batch in the workers, one slice per worker, results in order."""
        self.start()
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        size = -(-len(datas) // self.workers)
        slices = [list(datas[i : i + size]) for i in range(0, len(datas), size)]
        jobs = [
            loop.run_in_executor(self._pool, parse_many, part, self.default_language)
            for part in slices
        ]
        try:
            parts = await asyncio.gather(*jobs)
        except BrokenProcessPool as exc:
            self.close()
            raise Transient(f"a parser process died: {exc}") from exc
        return [item for part in parts for item in part]

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
