"""The storage layer on real SQLite and PostgreSQL: schema, durability, the plain-SQL fast path."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import peewee as pw
import pytest

from mailtick.db import (
    LATEST,
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
    kind = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    raw = pw.SqliteDatabase(db_url[len("sqlite:///") :]) if kind == "sqlite" else None
    old = raw or open_plain_postgres(db_url)
    lines = (SCHEMAS / f"v1.{kind}.sql").read_text().splitlines()
    ddl = "\n".join(line for line in lines if not line.startswith("--"))
    for statement in ddl.split(";\n"):
        if statement.strip():
            old.execute_sql(statement)  # type: ignore[no-untyped-call]  # (peewee is untyped)
    old.execute_sql(  # type: ignore[no-untyped-call]
        "INSERT INTO quarantine (mailbox, uidvalidity, uid, message_id, reason, data, at)"
        f" VALUES ('INBOX', 7, 3, '<q@x>', 'too big', {old.param}, '2026-01-02 03:04:05')",
        (b"raw",),
    )
    old.close()

    db = open_database(db_url)
    assert [v.version for v in SchemaVersion.select().order_by(SchemaVersion.id)] == [1, LATEST]
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
