"""Stage `parse` for batches: worker processes, so parsing overlaps recording. Touches nothing.

Parsing is pure-Python CPU work; on the database thread it would take turns with
recording under the GIL. With `imap.parse_workers` > 0 every batch is parsed in
forked worker processes while the database thread records the previous batch;
a worker is also where a mail that hangs or crashes the parser does its harm.

The pool is forked at start-up, after the language model is loaded, so workers
inherit it and start in milliseconds. When a batch takes longer than
`imap.parse_timeout` or kills a worker, the workers are killed, the pool is
started afresh and the batch's mails are parsed one at a time: the mail at fault
becomes a Transient outcome (a failed attempt, see the poison cap in pipeline.py),
the others are parsed normally.
"""

from __future__ import annotations

import asyncio
import contextlib
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

PR_SET_PDEATHSIG = 1  # prctl(2)
Parsed = ParsedMail | Rejected | Transient  # Transient: parsing this mail failed this time


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
    def __init__(self, workers: int, default_language: str, timeout: float = 60.0) -> None:
        self.workers = workers
        self.default_language = default_language
        self.timeout = timeout
        self._pool: ProcessPoolExecutor | None = None

    def wanted(self, count: int) -> bool:
        return self.workers > 0 and count > 0

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
        """Parse a batch in the workers, one slice per worker, results in order. When the
        batch fails (timeout, a dead worker), each mail is parsed alone to find the culprit."""
        size = -(-len(datas) // self.workers)
        slices = [list(datas[i : i + size]) for i in range(0, len(datas), size)]
        try:
            parts = await self._run(slices)
        except Transient as exc:
            if len(datas) == 1:
                return [exc]
            log.warning("parsing %d mails one at a time: %s", len(datas), exc.reason)
        else:
            return [item for part in parts for item in part]
        results: list[Parsed] = []
        for data in datas:
            try:
                [[parsed]] = await self._run([[data]])
            except Transient as exc:
                parsed = exc
            results.append(parsed)
        return results

    async def _run(self, slices: list[list[bytes]]) -> list[list[Parsed]]:
        self.start()
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        jobs = [
            loop.run_in_executor(self._pool, parse_many, part, self.default_language)
            for part in slices
        ]
        try:
            return await asyncio.wait_for(asyncio.gather(*jobs), self.timeout)
        except TimeoutError:
            self.kill()
            reason = f"parsing took longer than imap.parse_timeout={self.timeout:g}s"
            raise Transient(reason) from None
        except BrokenProcessPool as exc:
            self.kill()
            raise Transient(f"the parser process died: {exc}") from exc

    def kill(self) -> None:
        """Kill the workers (one may be stuck in a mail) and forget the pool."""
        self._stop(grace=0.0)

    def close(self) -> None:
        """Stop the workers: idle ones exit at once, one stuck in a mail is killed after 5 s."""
        self._stop(grace=5.0)

    def _stop(self, grace: float) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list(getattr(pool, "_processes", {}).values())  # no public handle
        if not grace:
            for process in processes:
                with contextlib.suppress(OSError):
                    process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(timeout=grace or 5.0)
            if process.is_alive():
                with contextlib.suppress(OSError):
                    process.kill()
                process.join(timeout=5.0)
