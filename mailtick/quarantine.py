"""Quarantine records: a mail we could not process, its reason and bytes. Database."""

from __future__ import annotations

import peewee as pw

from mailtick.db import Quarantine, write_transaction
from mailtick.mail import RawMail


def quarantine(db: pw.Database, raw: RawMail, message_id: str, reason: str) -> None:
    with write_transaction(db):
        Quarantine.create(
            mailbox=raw.mailbox,
            uidvalidity=raw.uidvalidity,
            uid=raw.uid,
            message_id=message_id,
            reason=reason,
            data=raw.data,
        )
