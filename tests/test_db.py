"""The storage layer on real SQLite and PostgreSQL: schema, durability, the plain-SQL fast path."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import peewee as pw
import pytest

from mailtick.db import (
    LATEST,
    MIGRATIONS,
    Address,
    Attempt,
    Message,
    Outbox,
    Quarantine,
    SchemaVersion,
    Ticket,
    check_durability,
    insert_row,
    open_database,
    utcnow,
)
from mailtick.ingest.imap import Selected
from mailtick.ingest.watch import load_cursor, save_cursor


def test_fast_insert_reads_back_like_the_orm_with_defaults(db_url: str) -> None:
    db = open_database(db_url)
    now = utcnow()
    ticket_id = insert_row(Ticket, number="10019", subject="Ü-Test", requester="a@b.example")
    message_id = insert_row(
        Message,
        ticket=ticket_id,
        message_id="<m@x>",
        direction="out",
        author_addr="s@x",
        data=b"\x00\xffbytes",
        created_at=now,
    )
    outbox_id = insert_row(Outbox, message=message_id, mail_from="s@x", rcpt_to="a@b.example")

    ticket = Ticket.get_by_id(ticket_id)
    assert (ticket.status, ticket.subject, ticket.language) == ("open", "Ü-Test", "en")
    assert isinstance(ticket.created_at, datetime)
    message = Message.get_by_id(message_id)
    assert bytes(message.data) == b"\x00\xffbytes" and message.created_at == now
    row = Outbox.get_by_id(outbox_id)
    assert (row.status, row.attempts, row.message_id) == ("pending", 0, message_id)
    assert Outbox.select().where(Outbox.next_attempt_at <= utcnow()).count() == 1
    db.close()


SCHEMAS = Path(__file__).parent / "data" / "schema"


def test_schema_is_created_once_and_versioned(db_url: str) -> None:
    open_database(db_url).close()
    db = open_database(db_url)  # a second start upgrades nothing and loses nothing
    assert [v.version for v in SchemaVersion.select()] == [LATEST]
    db.close()


def test_a_schema_1_database_is_upgraded_keeping_its_rows(db_url: str) -> None:
    """A database made by the first release (its DDL as that release created it) opens
    with the current code: new columns get their defaults, new tables exist, rows stay."""
    old = old_schema(db_url, 1)
    old.execute_sql(  # type: ignore[no-untyped-call]
        "INSERT INTO quarantine (mailbox, uidvalidity, uid, message_id, reason, data, at)"
        f" VALUES ('INBOX', 7, 3, '<q@x>', 'too big', {old.param}, '2026-01-02 03:04:05')",
        (b"raw",),
    )
    old.close()

    db = open_database(db_url)
    upgrades = [version for version, _ in MIGRATIONS]
    assert [v.version for v in SchemaVersion.select().order_by(SchemaVersion.id)] == [1, *upgrades]
    row = Quarantine.get()
    assert (row.reason, bytes(row.data), row.path, row.size) == ("too big", b"raw", "", 0)
    ticket_id = insert_row(Ticket, number="10019", subject="s", requester="a@b.example")
    message_id = insert_row(
        Message,
        ticket=ticket_id,
        message_id="<m@x>",
        direction="out",
        author_addr="s@x",
        data=b"x",
    )
    insert_row(Outbox, message=message_id, mail_from="s@x", rcpt_to="a@b.example", kind="ack")
    assert Outbox.get().kind == "ack" and Outbox.get().subject_key == ""
    Attempt.create(mailbox="INBOX", uidvalidity=7, uid=4, count=1)
    Address.create(address="a@b.example", bouncing=True)
    assert Address.get().bouncing and Attempt.get().count == 1
    db.close()


def old_schema(db_url: str, version: int) -> pw.Database:
    """A database with the schema `version` as that release created it (its captured DDL),
    opened without mailtick's models."""
    kind = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    raw = pw.SqliteDatabase(db_url[len("sqlite:///") :]) if kind == "sqlite" else None
    old = raw or open_plain_postgres(db_url)
    lines = (SCHEMAS / f"v{version}.{kind}.sql").read_text().splitlines()
    ddl = "\n".join(line for line in lines if not line.startswith("--"))
    for statement in ddl.split(";\n"):
        if statement.strip():
            old.execute_sql(statement)  # type: ignore[no-untyped-call]
    return old


def test_a_schema_2_database_is_upgraded_and_its_cursor_adopted(db_url: str) -> None:
    """Schema 3 names the account in the cursor and the dedupe keys. A schema-2 database
    keeps its rows; its cursor (account unknown) is adopted by the first account that
    starts on that mailbox, so nothing is fetched twice; another account starts afresh."""
    old = old_schema(db_url, 2)
    old.execute_sql(  # type: ignore[no-untyped-call]
        "INSERT INTO mailboxcursor (mailbox, uidvalidity, last_uid) VALUES ('INBOX', 7, 5)"
    )
    old.execute_sql(  # type: ignore[no-untyped-call]
        "INSERT INTO attempt (mailbox, uidvalidity, uid, count, last_error, first_at, last_at)"
        " VALUES ('INBOX', 7, 6, 2, 'x', '2026-01-02 03:04:05', '2026-01-02 03:04:05')"
    )
    old.close()

    db = open_database(db_url)
    assert [v.version for v in SchemaVersion.select().order_by(SchemaVersion.id)] == [2, LATEST]
    assert (Attempt.get().account, Attempt.get().count) == ("", 2)
    support = Selected("INBOX", 7, 9, "support@example.com@127.0.0.1")
    assert load_cursor(db, support) == 5  # adopted: goes on where schema 2 was
    assert load_cursor(db, support) == 5
    sales = Selected("INBOX", 7, 9, "sales@example.com@127.0.0.1")
    assert load_cursor(db, sales) == 0  # same name and UIDVALIDITY, another mailbox
    save_cursor(db, sales, 3)
    assert (load_cursor(db, support), load_cursor(db, sales)) == (5, 3)
    # the new keys: the same mailbox/UIDVALIDITY/UID of two accounts are two rows
    for account in ("support@example.com@127.0.0.1", "sales@example.com@127.0.0.1"):
        Attempt.create(account=account, mailbox="INBOX", uidvalidity=7, uid=6, count=1)
    assert Attempt.select().count() == 3
    db.close()


def open_plain_postgres(url: str) -> pw.Database:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    db = pw.PostgresqlDatabase(
        parts.path.lstrip("/"), user=parts.username, host=parts.hostname, port=parts.port
    )
    db.connect()
    return db


def test_sqlite_without_wal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.db"
    plain = pw.SqliteDatabase(
        str(path), pragmas={"journal_mode": "delete", "synchronous": "normal"}
    )
    plain.connect()
    with pytest.raises(RuntimeError, match=r"journal_mode is .delete., expected .wal."):
        check_durability(plain)
    plain.close()
    db = open_database(f"sqlite:///{path}")
    check_durability(db)  # mailtick's own connection sets WAL and FULL
    db.close()
