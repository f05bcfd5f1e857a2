"""Quarantine: mail that could not be processed, its reason and bytes; `mailtick quarantine`.
Database, and IMAP for requeue.

A quarantined mail is moved to the server's quarantine folder and stored here with
its reason. `requeue` puts it back into the inbox (the quarantine folder's copy is
moved back when it can be found by its Message-ID, else the stored bytes are
appended) so the daemon processes it again; `drop` forgets the record and leaves
the server's copy to the mailbox owner.
"""

from __future__ import annotations

from email.parser import BytesHeaderParser
from typing import Any

import peewee as pw

from mailtick.config import ImapConfig
from mailtick.db import Quarantine, write_transaction
from mailtick.ingest.imap import ImapConnection, quote
from mailtick.ingest.parse import clean_header
from mailtick.mail import RawMail


def add_quarantine(raw: RawMail, message_id: str, reason: str) -> None:
    """Store the mail and the reason; call inside a transaction."""
    Quarantine.create(
        mailbox=raw.mailbox,
        uidvalidity=raw.uidvalidity,
        uid=raw.uid,
        message_id=message_id,
        reason=reason,
        data=raw.data,
    )


def describe(row: Quarantine) -> dict[str, Any]:
    headers = BytesHeaderParser().parsebytes(bytes(row.data)[:65536])
    return {
        "id": row.id,
        "at": row.at.isoformat(timespec="seconds") + "Z",
        "where": f"{row.mailbox}/{row.uidvalidity}/{row.uid}",
        "message_id": row.message_id,
        "reason": row.reason,
        "size": len(bytes(row.data)),
        "from": clean_header(headers.get("From", "")),
        "subject": clean_header(headers.get("Subject", "")),
        "date": clean_header(headers.get("Date", "")),
    }


def find(row_id: int) -> Quarantine | None:
    found: Quarantine | None = Quarantine.get_or_none(Quarantine.id == row_id)
    return found


def list_rows(db: pw.Database) -> list[dict[str, Any]]:
    return [describe(row) for row in Quarantine.select().order_by(Quarantine.id)]


def drop(db: pw.Database, row_id: int) -> bool:
    with write_transaction(db):
        return bool(Quarantine.delete().where(Quarantine.id == row_id).execute())


async def requeue(db: pw.Database, imap: ImapConfig, row_id: int) -> str:
    """Back into the inbox for another attempt; returns how. KeyError for an unknown id."""
    row = find(row_id)
    if row is None:
        raise KeyError(row_id)
    conn = ImapConnection(imap)
    try:
        await conn.open()
        how = await _move_back(conn, imap, row)
    finally:
        await conn.close()
    with write_transaction(db):
        Quarantine.delete().where(Quarantine.id == row_id).execute()
    return how


async def _move_back(conn: ImapConnection, imap: ImapConfig, row: Quarantine) -> str:
    found: list[int] = []
    if row.message_id and "@no-message-id." not in row.message_id:
        await conn.select(imap.quarantine_mailbox)
        found = await conn.search("HEADER", "Message-ID", quote(str(row.message_id)))
    if len(found) == 1:
        await conn.move(found, imap.mailbox)
        return f"moved from {imap.quarantine_mailbox} back to {imap.mailbox}"
    await conn.append(bytes(row.data), imap.mailbox)
    return f"stored copy appended to {imap.mailbox}"
