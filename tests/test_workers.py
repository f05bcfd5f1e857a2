"""Parsing batches in worker processes: same result as inline, and a dead worker loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from servers import make_mail

from mailtick.ingest.workers import ParsePool, parse_many
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
    assert all(isinstance(m, ParsedMail) for m in pooled)
    assert [(m.message_id, m.subject, m.language) for m in pooled] == [  # type: ignore[union-attr]
        (m.message_id, m.subject, m.language)
        for m in inline  # type: ignore[union-attr]
    ]


def test_a_killed_worker_becomes_a_retry_and_the_pool_recovers() -> None:
    pool = ParsePool(workers=1, default_language="en")
    try:
        pool.start()
        asyncio.run(pool.parse(MAILS))
        for pid in list(pool._pool._processes):  # type: ignore[union-attr]
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(Transient, match="parser process died"):
            asyncio.run(pool.parse(MAILS))
        assert len(asyncio.run(pool.parse(MAILS))) == len(MAILS)  # a fresh pool
    finally:
        pool.close()
