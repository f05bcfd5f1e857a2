"""Parsing batches in worker processes: same result as inline, and a dead worker loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from servers import make_mail, slow_mail

from mailtick.ingest.workers import Parsed, ParsePool, parse_many
from mailtick.mail import ParsedMail
from mailtick.outcomes import Transient

MAILS = [
    make_mail(subject=f"Request {n}", body=f"Unsere Webseite {n} ist nicht erreichbar.")
    for n in range(12)
]


def test_workers_parse_like_the_database_thread() -> None:
    pool = ParsePool(workers=2, default_language="en")
    try:
        pooled = asyncio.run(pool.parse(MAILS))
    finally:
        pool.close()
    inline = parse_many(MAILS, "en")
    assert [(m.message_id, m.subject, m.language) for m in _all_parsed(pooled)] == [
        (m.message_id, m.subject, m.language) for m in _all_parsed(inline)
    ]


def test_a_killed_worker_costs_nothing_the_batch_is_parsed_again() -> None:
    pool = ParsePool(workers=1, default_language="en")
    try:
        pool.start()
        asyncio.run(pool.parse(MAILS))
        for pid in _worker_pids(pool):
            os.kill(pid, signal.SIGKILL)
        again = asyncio.run(pool.parse(MAILS))  # one at a time, in a fresh pool
        assert [m.subject for m in _all_parsed(again)] == [f"Request {n}" for n in range(12)]
    finally:
        pool.close()


def test_a_mail_over_the_parse_timeout_fails_alone_and_its_worker_is_killed() -> None:
    pool = ParsePool(workers=2, default_language="en", timeout=0.5)
    batch = [*MAILS[:5], slow_mail(), *MAILS[5:]]
    try:
        pool.start()
        workers = _worker_pids(pool)
        started = time.monotonic()
        results = asyncio.run(pool.parse(batch))
        took = time.monotonic() - started
    finally:
        pool.close()
    assert isinstance(results[5], Transient) and "parse_timeout=0.5s" in results[5].reason
    parsed = _all_parsed([r for n, r in enumerate(results) if n != 5])
    assert [m.subject for m in parsed] == [f"Request {n}" for n in range(12)]
    assert took < 0.5 * 2 + 5  # the batch, then the slow mail alone; the rest is quick
    assert not any(_alive(pid) for pid in workers)  # the stuck worker was killed


def test_workers_die_with_the_daemon(tmp_path: Path) -> None:
    """kill -9 of the daemon must not leave parser processes behind."""
    script = tmp_path / "daemon.py"
    script.write_text(
        "import sys, time\n"
        "from mailtick.ingest.workers import ParsePool\n"
        "pool = ParsePool(2, 'en'); pool.start(); time.sleep(1)\n"
        "print(' '.join(str(p) for p in pool._pool._processes), flush=True)\n"
        "time.sleep(60)\n"
    )
    command = [sys.executable, str(script)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as daemon:
        assert daemon.stdout is not None
        workers = [int(p) for p in daemon.stdout.readline().split()]
        assert len(workers) == 2
        daemon.kill()
        daemon.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers)


def _all_parsed(results: Sequence[Parsed]) -> list[ParsedMail]:
    """The results, each asserted to be a parsed mail (no Rejected or Transient outcome)."""
    parsed = [r for r in results if isinstance(r, ParsedMail)]
    assert len(parsed) == len(results), results
    return parsed


def _worker_pids(pool: ParsePool) -> list[int]:
    """The process ids of a started pool's workers (ProcessPoolExecutor keeps them by pid)."""
    assert pool._pool is not None, "the pool is not started"
    return list(pool._pool._processes)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie waiting for init to reap it counts as gone
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[1][0] != "Z"
