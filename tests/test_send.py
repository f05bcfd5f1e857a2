"""The outbox after a crash: leases of dead senders are freed, due times respect leases."""

from __future__ import annotations

import os
import subprocess
from datetime import timedelta

import peewee as pw

from mailtick.db import Message, Outbox, Ticket, insert_row, open_database, utcnow
from mailtick.send import _HOST, claim_token, next_due, release_mine, release_orphans


def _row(db: pw.Database, n: int, token: str | None, until_minutes: int) -> int:
    ticket = insert_row(Ticket, number=f"1{n:04d}", subject="s", requester="a@b.example")
    message = insert_row(
        Message,
        ticket=ticket,
        message_id=f"<{n}@x>",
        direction="out",
        author_addr="s@x",
        data=b"x",
    )
    return insert_row(
        Outbox,
        message=message,
        mail_from="s@x",
        rcpt_to="a@b.example",
        claim_token=token,
        claimed_until=utcnow() + timedelta(minutes=until_minutes) if token else None,
    )


def test_leases_of_dead_senders_on_this_host_are_freed(sqlite_url: str) -> None:
    db = open_database(sqlite_url)
    dead = subprocess.Popen(["true"])
    dead.wait()
    mine = claim_token()
    rows = {
        "dead process": _row(db, 1, f"{_HOST}:{dead.pid}:deadbeef:aaaaaa", 10),
        "earlier us": _row(db, 2, f"{_HOST}:{os.getpid()}:00000000:bbbbbb", 10),
        "other host": _row(db, 3, f"ffffffff:{dead.pid}:deadbeef:cccccc", 10),
        "alive (us)": _row(db, 4, mine, 10),
    }
    assert release_orphans(db) == 2
    held = {name: Outbox.get_by_id(i).claim_token for name, i in rows.items()}
    assert held["dead process"] is None and held["earlier us"] is None
    assert held["other host"] is not None and held["alive (us)"] == mine
    db.close()


def test_next_due_waits_for_a_lease_to_run_out(sqlite_url: str) -> None:
    db = open_database(sqlite_url)
    _row(db, 1, "ffffffff:1:x:y", 10)
    due = next_due()
    assert due is not None and due > utcnow() + timedelta(minutes=9)
    _row(db, 2, None, 0)
    due = next_due()
    assert due is not None and due <= utcnow()
    db.close()


def test_a_clean_stop_frees_only_its_own_leases(db_url: str) -> None:
    """Another instance sharing the database can send them at once, not after 10 minutes."""
    db = open_database(db_url)
    mine = _row(db, 1, claim_token(), 10)
    others = _row(db, 2, "ffffffff:1:deadbeef:cccccc", 10)
    assert release_mine(db) == 1
    assert Outbox.get_by_id(mine).claim_token is None
    assert Outbox.get_by_id(others).claim_token == "ffffffff:1:deadbeef:cccccc"
    due = next_due()
    assert due is not None and due <= utcnow()  # mine is due again now
    db.close()
