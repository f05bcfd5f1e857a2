"""Quarantine records: a mail we could not process, its reason and bytes. Database."""

from __future__ import annotations

from mailtick.db import Quarantine
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
