"""Several processes on one database (two daemons on one PostgreSQL, or a daemon plus a CLI)."""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.synchronize import Event

from servers import make_mail

from mailtick.answers import Composer
from mailtick.config import DriftConfig, LimitsConfig, TicketsConfig
from mailtick.db import Message, Outbox, Ticket, open_database
from mailtick.ingest.classify import classify
from mailtick.ingest.parse import parse
from mailtick.record.intake import Intake, Settings
from mailtick.record.stage import record

PER_PROCESS = 60


def _create_tickets(url: str, worker: int, start: Event, shared_raw: bytes) -> None:
    db = open_database(url)
    composer = Composer("Support <support@example.com>", "MT", "en")
    settings = Settings(TicketsConfig(), DriftConfig(), LimitsConfig(), composer)
    mails = [
        parse(
            make_mail(from_addr=f"w{worker}n{n}@customer.example", subject=f"Request {worker}/{n}")
        )
        for n in range(PER_PROCESS)
    ]
    shared = parse(shared_raw)
    start.wait(10)
    for n, mail in enumerate(mails):
        record(db, Intake.of(None, mail, classify(mail, 10**7), settings))
        if n == PER_PROCESS // 2:  # both processes race to store the same mail
            try:
                record(db, Intake.of(None, shared, classify(shared, 10**7), settings))
            except Exception as exc:
                assert "duplicate Message-ID" in str(exc), exc
    db.close()


def test_two_processes_never_share_a_ticket_number(db_url: str) -> None:
    open_database(db_url).close()  # schema first, as the daemon's start-up does
    context = mp.get_context("spawn")
    start = context.Event()
    shared = make_mail(from_addr="both@customer.example", subject="Sent to two addresses")
    workers = [
        context.Process(target=_create_tickets, args=(db_url, w, start, shared)) for w in range(2)
    ]
    for proc in workers:
        proc.start()
    start.set()
    for proc in workers:
        proc.join(60)
        assert proc.exitcode == 0
    db = open_database(db_url)
    numbers = [t.number for t in Ticket.select()]
    assert len(numbers) == 2 * PER_PROCESS + 1 == len(set(numbers))
    assert Message.select().where(Message.author_addr == "both@customer.example").count() == 1
    assert Outbox.select().count() == 2 * PER_PROCESS + 1  # one acknowledgement each
    db.close()
