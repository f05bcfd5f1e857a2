"""Several instances on one database: the poison cap's bookkeeping, recording, the mailbox
identity. Real PostgreSQL/SQLite, Dovecot and SMTP sink; instances are real processes."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from multiprocessing.synchronize import Event
from pathlib import Path

import peewee as pw
from aiosmtpd.smtp import Envelope, Session
from harness import (
    SUPPORT,
    daemon_process,
    mailtick,
    make_config,
    run_once,
    settings,
    spawn_daemon,
    wait_until,
    write_config,
)
from servers import Dovecot, ImapTestClient, SmtpSink, free_port, make_mail, stop_process

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
        db.execute_sql(  # type: ignore[no-untyped-call]
            "CREATE TRIGGER refuse BEFORE INSERT ON message"
            f" WHEN instr(NEW.subject, '{word}') > 0"
            " BEGIN SELECT RAISE(ABORT, 'refused by a test constraint'); END"
        )
    else:
        db.execute_sql(  # type: ignore[no-untyped-call]
            f"ALTER TABLE message ADD CONSTRAINT refuse CHECK (position('{word}' in subject) = 0)"
        )


def _allow_again(db: pw.Database) -> None:
    if isinstance(db, pw.SqliteDatabase):
        db.execute_sql("DROP TRIGGER refuse")  # type: ignore[no-untyped-call]
    else:
        db.execute_sql("ALTER TABLE message DROP CONSTRAINT refuse")  # type: ignore[no-untyped-call]


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


OTHER = "sales@example.com"


def _same_uidvalidity(dovecot: Dovecot, users: list[str], uidvalidity: int) -> None:
    """Give each user's INBOX (a Maildir, created here before the first login) the same
    UIDVALIDITY, as two mailboxes created in the same second get."""
    for user in users:
        inbox = dovecot.mail_dir / user
        for sub in ("cur", "new", "tmp"):
            (inbox / sub).mkdir(parents=True)
        (inbox / "dovecot-uidlist").write_text(f"3 V{uidvalidity} N1\n")
        for path in [inbox, *inbox.rglob("*")]:
            shutil.chown(path, "dovecot", "dovecot")


def _uidvalidity(client: ImapTestClient) -> int:
    typ, data = client.imap.status("INBOX", "(UIDVALIDITY)")
    assert typ == "OK", data
    return int(bytes(data[0]).split(b"UIDVALIDITY ")[1].rstrip(b")"))


def test_two_accounts_whose_inboxes_share_uidvalidity_both_become_tickets(
    dovecot_factory: Callable[..., Dovecot], smtp_sink: SmtpSink, db_url: str
) -> None:
    """Two mailtick configurations (support@ and sales@ on one server) on one database.
    Their INBOXes have the same name and the same UIDVALIDITY: the cursor and the dedupe
    keys name the account too, so every mail of both becomes a ticket (it was: the second
    account fetched nothing, its mails sat in INBOX without an error)."""
    dovecot = dovecot_factory(users={SUPPORT: "secret", OTHER: "secret"})
    _same_uidvalidity(dovecot, [SUPPORT, OTHER], 1700000000)
    mails = {
        user: [
            make_mail(from_addr=f"c{n}@customer.example", subject=f"{user} request {n}")
            for n in range(3)
        ]
        for user in (SUPPORT, OTHER)
    }
    for user, raws in mails.items():
        with dovecot.client(user) as client:
            assert _uidvalidity(client) == 1700000000
            client.append_many(raws)
    support = make_config(dovecot, smtp_sink, db_url)
    sales = make_config(dovecot, smtp_sink, db_url, imap={"username": OTHER})

    assert run_once(support).ingest.acked == 3
    assert run_once(sales).ingest.acked == 3
    for user in (SUPPORT, OTHER):
        with dovecot.client(user) as client:
            assert client.count("INBOX") == 0
            assert len(client.message_ids("Processed")) == 3
    db = open_database(db_url)
    assert Ticket.select().count() == 6
    db.close()


class KillingSink(SmtpSink):
    """An SmtpSink that SIGKILLs the sending daemon when a DATA command arrives after
    `after` accepted mails: every mail before it was answered 250, this one never is."""

    def __init__(self) -> None:
        super().__init__()
        self.victim: subprocess.Popen[bytes] | None = None
        self.kill_after: list[int] = []

    def _on_data(self, session: Session, envelope: Envelope) -> str:
        victim = self.victim
        if victim is not None and self.kill_after and len(self.messages) >= self.kill_after[0]:
            self.kill_after.pop(0)
            self.victim = None
            os.killpg(victim.pid, signal.SIGKILL)
            return "451 4.3.0 the sender is gone"
        return super()._on_data(session, envelope)


def test_a_sender_killed_between_mails_sends_none_twice(
    dovecot: Dovecot, imap_client: ImapTestClient, db_url: str, tmp_path: Path
) -> None:
    """The daemon is SIGKILLed three times while it sends 30 acknowledgements, each time
    just after the server accepted a mail: each accepted mail was marked sent before the
    next went out, so after the restarts every customer has exactly one acknowledgement
    (it was: the marks lagged behind the sending, and the restart sent those mails again)."""
    imap_client.append_many(
        [make_mail(from_addr=f"c{n}@customer.example", subject=f"Request {n}") for n in range(30)]
    )
    with KillingSink() as sink:
        unreachable = make_config(dovecot, sink, db_url, smtp={"port": free_port()})
        assert run_once(unreachable).ingest.acked == 30  # 30 acknowledgements wait
        config = write_config(tmp_path / "config.toml", settings(dovecot, sink, db_url))
        sink.kill_after = [5, 12, 20]
        for run in range(4):
            log_path = tmp_path / f"daemon-{run}.log"
            proc = spawn_daemon(config, log_path, start_new_session=True)
            try:
                if run < 3:
                    sink.victim = proc
                    assert proc.wait(60) == -signal.SIGKILL, log_path.read_text()
                else:
                    sink.wait_for(30, timeout=30)
            finally:
                stop_process(proc)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # parse workers a SIGKILL orphaned
        delivered = Counter(str(mail.message["In-Reply-To"]) for mail in sink.messages)
    assert len(delivered) == 30
    assert max(delivered.values()) == 1, delivered


def test_a_second_instance_on_one_sqlite_database_refuses_to_start(
    dovecot: Dovecot, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    """SQLite is for one instance: a second `mailtick run` on the same database says so in
    one line and exits non-zero; the first goes on."""
    data = settings(dovecot, smtp_sink, f"sqlite:///{tmp_path}/mailtick.db")
    config = write_config(tmp_path / "config.toml", data)
    with daemon_process(config, tmp_path / "first.log") as first:
        second = mailtick("run", "-c", str(config), timeout=60)
        assert first.poll() is None
    assert second.returncode == 1
    [line] = second.stderr.strip().splitlines()
    assert "another mailtick" in line and f"pid {first.pid}" in line, line


@contextlib.contextmanager
def daemons(config: Path, logs: Path, count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`count` daemons on one configuration, each in a process group of its own (so that a
    SIGKILL can take its parse workers along, as systemd does with a unit's cgroup);
    whatever still runs at the end is stopped."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for number in range(count):
            procs.append(start_daemon(config, logs / f"daemon-{number}-0.log"))
        yield procs
    finally:
        for proc in procs:
            end_group(proc)


def start_daemon(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    return spawn_daemon(config, log_path, start_new_session=True)


def end_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the daemon (SIGTERM, bounded) and kill what is left of its process group."""
    stop_process(proc)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def leads(log_path: Path) -> int:
    """How often the daemon writing this log became the leader."""
    return log_path.read_text(errors="replace").count("leading ")


def test_one_instance_leads_the_mailbox_and_a_standby_takes_over_a_killed_leader(
    dovecot: Dovecot,
    imap_client: ImapTestClient,
    smtp_sink: SmtpSink,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    """Two daemons on one PostgreSQL database and one mailbox: only the leader fetches and
    moves; when it is SIGKILLed the other takes over within 15 s and drains the mailbox.
    Every mail is in Processed once, every customer got an acknowledgement (one twice at
    most: the leader may die between the server's 250 and its sent mark)."""
    config = write_config(tmp_path / "config.toml", settings(dovecot, smtp_sink, postgres_url))
    first = [make_mail(from_addr=f"c{n}@customer.example", subject=f"A {n}") for n in range(10)]
    later = [make_mail(from_addr=f"d{n}@customer.example", subject=f"B {n}") for n in range(10)]
    with daemons(config, tmp_path, 2) as procs:
        logs = [tmp_path / f"daemon-{n}-0.log" for n in range(2)]
        wait_until(lambda: sum(leads(path) for path in logs) == 1, 30)
        leader = next(n for n, path in enumerate(logs) if leads(path))
        wait_until(lambda: b"IMAP connected" in logs[leader].read_bytes(), 30)
        imap_client.append_many(first)
        wait_until(lambda: imap_client.count("Processed") == 10, 30)
        standby_log = logs[1 - leader].read_text()
        assert " new ticket " not in standby_log and "UID FETCH" not in standby_log

        os.killpg(procs[leader].pid, signal.SIGKILL)
        killed = time.monotonic()
        procs[leader].wait()  # reaped, as systemd does: its pid is gone
        imap_client.append_many(later)
        wait_until(lambda: leads(logs[1 - leader]) == 1, 15)
        takeover = time.monotonic() - killed
        wait_until(lambda: imap_client.count("Processed") == 20, 30)
        smtp_sink.wait_for(20, timeout=30)
    assert takeover < 15
    assert imap_client.count("INBOX") == 0
    processed = Counter(imap_client.message_ids("Processed"))
    assert len(processed) == 20 and max(processed.values()) == 1
    acks = Counter(str(mail.message["In-Reply-To"]) for mail in smtp_sink.messages)
    assert len(acks) == 20
    assert sum(acks.values()) - len(acks) <= 1  # at most the one mail in flight at the kill
