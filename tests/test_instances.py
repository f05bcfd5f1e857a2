"""Several instances on one database: the poison cap's bookkeeping, recording, the mailbox
identity. Real PostgreSQL/SQLite, Dovecot and SMTP sink; instances are real processes."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from multiprocessing.synchronize import Event

from harness import make_config
from servers import Dovecot, SmtpSink

from mailtick.app import Daemon
from mailtick.db import Attempt, open_database, write_transaction
from mailtick.mail import RawMail
from mailtick.pipeline import begin_batch, count_try, end_tries

ROUNDS = 300


def _handle_one_mail_again_and_again(url: str, start: Event) -> None:
    """What an instance does with a mail it fetched: count a try (alone, when it was
    tried before), then record it and forget the try. Two of these race on one mail."""
    db = open_database(url)
    raw = RawMail("INBOX", 7, 1, b"Subject: x\r\n\r\nx\r\n")
    start.wait(10)
    for _ in range(ROUNDS):
        tries = begin_batch(db, [raw])
        if raw.uid in tries:
            count_try(db, raw)
        with write_transaction(db):
            end_tries([raw], [raw.uid])
    db.close()


def test_two_instances_counting_tries_of_one_mail_never_crash(postgres_url: str) -> None:
    """Each instance inserts, bumps and deletes the same `attempt` row: a row the other
    just inserted or deleted is no reason to die (it was: unique-key error on the insert,
    AttemptDoesNotExist after the bump)."""
    open_database(postgres_url).close()
    context = mp.get_context("spawn")
    start = context.Event()
    workers = [
        context.Process(target=_handle_one_mail_again_and_again, args=(postgres_url, start))
        for _ in range(2)
    ]
    for proc in workers:
        proc.start()
    start.set()
    for proc in workers:
        proc.join(120)
    assert [proc.exitcode for proc in workers] == [0, 0]
    db = open_database(postgres_url)
    assert Attempt.select().count() == 0  # every try ended with its outcome
    db.close()


def test_a_batch_that_became_empty_is_nothing_to_do(
    dovecot: Dovecot, smtp_sink: SmtpSink, db_url: str
) -> None:
    """Every mail of a batch was expunged between SEARCH and FETCH (another instance, or
    the mailbox owner, moved them): nothing to record, no crash (it was: IndexError)."""

    async def empty_batch() -> list[object]:
        daemon = Daemon(make_config(dovecot, smtp_sink, db_url))
        await daemon.open()
        try:
            return list(await daemon.pipeline.commit([], None))
        finally:
            await daemon.close()

    assert asyncio.run(empty_batch()) == []
