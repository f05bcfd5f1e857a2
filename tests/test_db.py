"""The storage layer on real SQLite and PostgreSQL: schema, durability, the plain-SQL fast path."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import peewee as pw
import pytest

from mailtick.db import (
    MIGRATIONS,
    Message,
    Outbox,
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
    ticket_id = insert_row(db, Ticket, number="10019", subject="Ü-Test", requester="a@b.example")
    message_id = insert_row(
        db,
        Message,
        ticket=ticket_id,
        message_id="<m@x>",
        direction="out",
        author_addr="s@x",
        data=b"\x00\xffbytes",
        created_at=now,
    )
    outbox_id = insert_row(db, Outbox, message=message_id, mail_from="s@x", rcpt_to="a@b.example")

    ticket = Ticket.get_by_id(ticket_id)
    assert (ticket.status, ticket.subject, ticket.language) == ("open", "Ü-Test", "en")
    assert isinstance(ticket.created_at, datetime)
    message = Message.get_by_id(message_id)
    assert bytes(message.data) == b"\x00\xffbytes" and message.created_at == now
    row = Outbox.get_by_id(outbox_id)
    assert (row.status, row.attempts, row.message_id) == ("pending", 0, message_id)
    assert Outbox.select().where(Outbox.next_attempt_at <= utcnow()).count() == 1
    db.close()


def test_schema_is_created_once_and_versioned(db_url: str) -> None:
    open_database(db_url).close()
    db = open_database(db_url)  # a second start upgrades nothing and loses nothing
    assert [v.version for v in SchemaVersion.select()] == [v for v, _ in MIGRATIONS]
    db.close()


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
