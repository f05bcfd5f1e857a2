"""`mailtick check-config --connect`: log in to IMAP and SMTP and report. Network."""

from __future__ import annotations

import aiosmtplib

from mailtick.config import Config
from mailtick.ingest.imap import ImapConnection
from mailtick.outcomes import Transient
from mailtick.send import smtp_client


async def probe(config: Config) -> list[tuple[str, bool, str]]:
    """(what, ok, detail) for the IMAP login + mailbox and the SMTP login."""
    return [await _imap(config), await _smtp(config)]


async def _imap(config: Config) -> tuple[str, bool, str]:
    conn = ImapConnection(config.imap)
    try:
        await conn.open()
        selected = await conn.select(config.imap.mailbox)
        idle = "IDLE" if conn.has("IDLE") else "no IDLE (polling)"
        move = "MOVE" if conn.has("MOVE") else "no MOVE (COPY+EXPUNGE)"
        return (
            "imap",
            True,
            f"logged in, {selected.mailbox} holds {selected.exists} mail(s); {idle}, {move}",
        )
    except Transient as exc:
        return "imap", False, exc.reason
    finally:
        await conn.close()


async def _smtp(config: Config) -> tuple[str, bool, str]:
    client = smtp_client(config.smtp)
    try:
        await client.connect()
        if config.smtp.username:
            await client.login(config.smtp.username, config.smtp.password)
        await client.noop()
        await client.quit()
        auth = "logged in" if config.smtp.username else "connected (no AUTH configured)"
        return "smtp", True, f"{auth} to {config.smtp.host}:{config.smtp.port}"
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return "smtp", False, f"{type(exc).__name__}: {exc}"
