"""Several instances on one database: the poison cap's bookkeeping, recording, the mailbox
identity. Real PostgreSQL/SQLite, Dovecot and SMTP sink; instances are real processes."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from multiprocessing.synchronize import Event

import peewee as pw
from harness import make_config, run_once
from servers import Dovecot, ImapTestClient, SmtpSink, make_mail

from mailtick.app import Daemon
from mailtick.db import Attempt, Message, Ticket, open_database, write_transaction
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


def _refuse_subject(db: pw.Database, word: str) -> None:
    """A constraint (not a uniqueness one) that refuses to store a mail with `word` in its
    subject, as a database-side rule, a full disk check or a bug would."""
    if isinstance(db, pw.SqliteDatabase):
        db.execute_sql(
            "CREATE TRIGGER refuse BEFORE INSERT ON message"
            f" WHEN instr(NEW.subject, '{word}') > 0"
            " BEGIN SELECT RAISE(ABORT, 'refused by a test constraint'); END"
        )
    else:
        db.execute_sql(
            f"ALTER TABLE message ADD CONSTRAINT refuse CHECK (position('{word}' in subject) = 0)"
        )


def _allow_again(db: pw.Database) -> None:
    if isinstance(db, pw.SqliteDatabase):
        db.execute_sql("DROP TRIGGER refuse")
    else:
        db.execute_sql("ALTER TABLE message DROP CONSTRAINT refuse")


def test_a_constraint_error_that_is_no_duplicate_leaves_the_mail_for_a_retry(
    dovecot: Dovecot, imap_client: ImapTestClient, smtp_sink: SmtpSink, db_url: str
) -> None:
    """Only a Message-ID found stored proves a duplicate; any other constraint error is a
    retry: the mail stays in INBOX, nothing is sent (it was: "duplicate Message-ID", the
    mail moved to Processed and no ticket)."""
    config = make_config(dovecot, smtp_sink, db_url)
    db = open_database(db_url)
    _refuse_subject(db, "Forbidden")
    db.close()
    imap_client.append(make_mail(from_addr="a@customer.example", subject="Printer broken"))
    refused = make_mail(from_addr="b@customer.example", subject="Forbidden word in here")
    imap_client.append(refused)

    first = run_once(config)
    assert (first.ingest.acked, first.ingest.retry) == (1, 1)
    assert imap_client.fetch_all("INBOX") == [refused]
    assert len(smtp_sink.wait_for(1)) == 1

    db = open_database(db_url)
    _allow_again(db)
    db.close()
    second = run_once(config)
    assert (second.ingest.acked, second.ingest.retry) == (1, 0)
    assert imap_client.fetch_all("INBOX") == []
    db = open_database(db_url)
    assert Ticket.select().count() == 2
    assert Message.select().where(Message.subject == "Forbidden word in here").count() == 1
    db.close()
