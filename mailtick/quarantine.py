"""Quarantine: mail that could not be processed, its reason and bytes; `mailtick quarantine`.
Database, files under `quarantine.directory`, and IMAP for requeue.

A quarantined mail is moved to the server's quarantine folder; its reason is a row
here and its raw bytes a file `<sha256>.eml` in the quarantine directory (the name
comes from the bytes' hash, never from the mail). The file is written and fsynced
before the row is committed, so a row always has its file. A mail too big to
download keeps only its header here (`size` says how big it is on the server).

`requeue` puts it back into the inbox (the quarantine folder's copy is moved back
when it can be found by its Message-ID, else the stored bytes are appended) so the
daemon processes it again; `drop` forgets the record and its file and leaves the
server's copy to the mailbox owner.
"""

from __future__ import annotations

import hashlib
import os
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import peewee as pw

from mailtick.config import ImapConfig
from mailtick.db import Quarantine, write_transaction
from mailtick.ingest.imap import ImapConnection, quote
from mailtick.ingest.parse import clean_header
from mailtick.mail import RawMail
from mailtick.outcomes import Transient


def add_quarantine(raw: RawMail, message_id: str, reason: str, directory: Path) -> int:
    """Write the mail's bytes under `directory`, then its row; call inside a transaction.
    OSError (disk full, no permission) leaves nothing behind: the caller retries later."""
    path = keep_bytes(raw.data, directory)
    row: Quarantine = Quarantine.create(
        account=raw.account,
        mailbox=raw.mailbox,
        uidvalidity=raw.uidvalidity,
        uid=raw.uid,
        message_id=message_id,
        reason=reason,
        data=b"",
        path=str(path),
        size=raw.size,
    )
    return int(row.id)


def keep_bytes(data: bytes, directory: Path) -> Path:
    """`directory/<sha256>.eml`, written atomically and fsynced (file and directory)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"{hashlib.sha256(data).hexdigest()}.eml"
    if path.exists() and path.stat().st_size == len(data):
        return path  # the same bytes, quarantined before
    temporary = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def stored_bytes(row: Quarantine) -> bytes:
    """The bytes kept for a row: its file (schema 2) or the database column (schema 1)."""
    if row.path:
        return Path(str(row.path)).read_bytes()
    return bytes(row.data)


def complete(row: Quarantine, data: bytes | None = None) -> bool:
    """False for a mail too big to download: only its header was kept."""
    kept = stored_bytes(row) if data is None else data
    return not row.size or len(kept) >= int(row.size)


def describe(row: Quarantine) -> dict[str, Any]:
    try:
        data = stored_bytes(row)
        missing = ""
    except OSError as exc:
        data, missing = b"", f"{row.path}: {exc.strerror or exc}"
    headers = BytesHeaderParser().parsebytes(data[:65536])
    return {
        "id": row.id,
        "at": row.at.isoformat(timespec="seconds") + "Z",
        "where": f"{row.mailbox}/{row.uidvalidity}/{row.uid}",
        "message_id": row.message_id,
        "reason": row.reason,
        "size": int(row.size) or len(data),
        "stored": "file missing: " + missing
        if missing
        else ("whole mail" if complete(row, data) else "header only"),
        "file": str(row.path),
        "from": clean_header(headers.get("From", "")),
        "subject": clean_header(headers.get("Subject", "")),
        "date": clean_header(headers.get("Date", "")),
    }


def find(row_id: int) -> Quarantine | None:
    found: Quarantine | None = Quarantine.get_or_none(Quarantine.id == row_id)
    return found


def list_rows() -> list[dict[str, Any]]:
    return [describe(row) for row in Quarantine.select().order_by(Quarantine.id)]


def drop(db: pw.Database, row_id: int) -> bool:
    """Forget the record and its file (unless another record keeps the same bytes)."""
    with write_transaction(db):
        row = find(row_id)
        if row is None:
            return False
        Quarantine.delete().where(Quarantine.id == row_id).execute()
        shared = Quarantine.select().where(Quarantine.path == row.path).exists()
    if row.path and not shared:
        Path(str(row.path)).unlink(missing_ok=True)
    return True


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
    drop(db, row_id)
    return how


async def _move_back(conn: ImapConnection, imap: ImapConfig, row: Quarantine) -> str:
    found: list[int] = []
    if row.message_id and "@no-message-id." not in row.message_id:
        await conn.select(imap.quarantine_mailbox)
        found = await conn.search("HEADER", "Message-ID", quote(str(row.message_id)))
    if len(found) == 1:
        await conn.move(found, imap.mailbox)
        return f"moved from {imap.quarantine_mailbox} back to {imap.mailbox}"
    if not complete(row):
        raise Transient(
            f"the mail ({row.size} bytes) is not in {imap.quarantine_mailbox} and only its"
            " header was kept: move it back to the inbox with a mail client"
        )
    await conn.append(stored_bytes(row), imap.mailbox)
    return f"stored copy appended to {imap.mailbox}"
