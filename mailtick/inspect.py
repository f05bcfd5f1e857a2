"""`mailtick parse FILE.eml`: how mailtick sees one mail. Reads the file and the database.

Nothing is written: the database is only asked, inside a transaction that is rolled back,
which ticket the mail would thread into and by which rule.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import peewee as pw

from mailtick.config import TicketsConfig
from mailtick.db import Ticket, open_database
from mailtick.ingest.classify import classify
from mailtick.ingest.parse import parse
from mailtick.ingest.quotes import split_reply
from mailtick.mail import ParsedMail
from mailtick.outcomes import Rejected
from mailtick.threading.resolve import Lookup, resolve

# The headers that decide what mailtick does with a mail, in the order they are shown.
HEADERS = (
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Auto-Submitted",
    "Precedence",
    "List-Id",
    "Return-Path",
    "Authentication-Results",
)
DEFAULTS = TicketsConfig()


def describe_mail(
    raw: bytes,
    default_language: str = DEFAULTS.default_language,
    *,
    max_bytes: int = DEFAULTS.max_mail_bytes,
) -> dict[str, Any]:
    """Everything mailtick derives from one mail. Raises Rejected for a mail it cannot parse."""
    mail = parse(raw, default_language)
    disposition = classify(mail, max(len(raw), max_bytes))  # the size rule is reported apart
    parts = split_reply(mail.text)
    return {
        "message_id": mail.message_id,
        "from": {"name": mail.from_name, "address": mail.from_addr},
        "to": list(mail.to),
        "cc": list(mail.cc),
        "subject": mail.subject,
        "date": mail.date.isoformat() if mail.date else None,
        "headers": {name: mail.headers.get(name.lower()) for name in HEADERS},
        "size": len(raw),
        "too_big": len(raw) > max_bytes,
        "language": mail.language,
        "automatic": disposition.automatic,
        "automatic_rule": disposition.reason,
        "answer": disposition.answer,  # False: no automatic answer (acknowledgement, ...)
        "visible": parts.visible,
        "signature": parts.signature,
        "quoted": parts.quoted,
        "quote_rule": parts.quote_rule,
        "signature_rule": parts.signature_rule,
        "attachments": [
            {"name": a.filename, "type": a.content_type, "size": len(a.data)}
            for a in mail.attachments
        ],
        "defects": list(mail.defects),
    }


def would_thread(
    db: pw.Database, mail: ParsedMail, prefix: str, reopen_days: int
) -> dict[str, Any]:
    """Which ticket the mail would join and by which rule; every query is rolled back."""
    with db.atomic() as transaction:
        try:
            lookup = Lookup(mail, prefix)
            duplicate = lookup.ticket_of(mail.message_id)
            decision = resolve(lookup, reopen_days)
            linked = Ticket.get_or_none(Ticket.id == decision.link_to) if decision.link_to else None
            return {
                "ticket": decision.ticket.number if decision.ticket else None,
                "rule": decision.rule,
                "detail": decision.detail,
                "reopen": decision.reopen,
                "link_to": linked.number if linked else None,
                "already_stored": duplicate is not None,
            }
        finally:
            transaction.rollback()


def parse_command(
    path: Path,
    as_json: bool,
    database_url: str | None,
    prefix: str,
    *,
    default_language: str = DEFAULTS.default_language,
    reopen_days: int = DEFAULTS.reopen_days,
    max_bytes: int = DEFAULTS.max_mail_bytes,
) -> int:
    """Print how mailtick sees the mail in `path` (and where it would thread); the exit code."""
    try:
        raw = path.read_bytes()
        report = describe_mail(raw, default_language, max_bytes=max_bytes)
        if database_url is not None:
            report["thread"] = _thread(raw, default_language, database_url, prefix, reopen_days)
    except (OSError, Rejected, pw.PeeweeException, ValueError) as exc:
        print(f"mailtick: {path}: {_reason(exc)}", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=2, ensure_ascii=False) if as_json else render(report, prefix)
    print(text)
    return 0


def _reason(exc: Exception) -> str:
    return exc.reason if isinstance(exc, Rejected) else f"{type(exc).__name__}: {exc}"


def _thread(raw: bytes, language: str, url: str, prefix: str, reopen_days: int) -> dict[str, Any]:
    _refuse_missing_sqlite(url)
    db = open_database(url)
    try:
        return would_thread(db, parse(raw, language), prefix, reopen_days)
    finally:
        db.close()


def _refuse_missing_sqlite(url: str) -> None:
    """open_database would create a missing SQLite file and its schema: a write."""
    parts = urlsplit(url)
    path = unquote(url[len("sqlite:///") :]) if parts.scheme == "sqlite" else ""
    if path and path != ":memory:" and not Path(path).exists():
        raise ValueError(f"no database at {path}")


# --- the readable form --------------------------------------------------------------------


def render(report: dict[str, Any], prefix: str) -> str:
    """The report as text: headers, verdicts, then visible text, signature and quote."""
    return "\n".join(line for section in _SECTIONS for line in section(report, prefix))


def _headers(report: dict[str, Any], _prefix: str) -> Iterator[str]:
    for name, value in report["headers"].items():
        if value:
            yield f"{name + ':':<24}{value}"


def _verdicts(report: dict[str, Any], prefix: str) -> Iterator[str]:
    automatic = "yes" if report["automatic"] else "no"
    yield ""
    yield f"{'Language:':<24}{report['language']}"
    yield f"{'Automatic:':<24}{automatic} ({report['automatic_rule']})"
    too_big = " (too big: would be quarantined)" if report["too_big"] else ""
    yield f"{'Size:':<24}{report['size']} bytes{too_big}"
    for a in report["attachments"]:
        yield f"{'Attachment:':<24}{a['name']} ({a['type']}, {a['size']} bytes)"
    if "thread" in report:
        yield f"{'Would thread:':<24}{_thread_line(report['thread'], prefix)}"


def _thread_line(thread: dict[str, Any], prefix: str) -> str:
    if thread["already_stored"]:
        return f"already stored on {prefix}#{thread['ticket']} (ignored)"
    if thread["ticket"] is None:
        linked = f", linked to {prefix}#{thread['link_to']}" if thread["link_to"] else ""
        return f"a new ticket{linked} ({thread['detail'] or 'nothing matched'})"
    reopen = ", reopening it" if thread["reopen"] else ""
    return f"{prefix}#{thread['ticket']} by {thread['rule']} ({thread['detail']}){reopen}"


def _texts(report: dict[str, Any], _prefix: str) -> Iterator[str]:
    for title, key, rule in (
        ("visible", "visible", ""),
        ("signature", "signature", "signature_rule"),
        ("quoted", "quoted", "quote_rule"),
    ):
        if report[key] or key == "visible":
            how = f" ({report[rule]})" if rule and report[rule] else ""
            yield ""
            yield f"--- {title}{how} ---"
            yield report[key]


_SECTIONS: tuple[Callable[[dict[str, Any], str], Iterator[str]], ...] = (
    _headers,
    _verdicts,
    _texts,
)
