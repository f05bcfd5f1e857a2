"""Unlucky mail: one odd mail never blocks the inbox (real Dovecot, aiosmtpd, SQLite, PG)."""

from __future__ import annotations

import sqlite3

import peewee as pw
import pytest
from harness import DANA, DANA_AGENT, Desk, make_config, run_once
from servers import Dovecot, ImapTestClient, SmtpSink, make_mail

from mailtick.db import Message, Ticket, is_connection_error, open_database


def test_a_mail_naming_250001_message_ids_is_recorded_and_blocks_nothing(
    dovecot: Dovecot, imap_client: ImapTestClient, smtp_sink: SmtpSink, db_url: str
) -> None:
    """Debian's SQLite allows 250,000 parameters per statement ("too many SQL variables"
    above): threading must never ask for as many as a header names."""
    ids = [f"<{n}@x.y>" for n in range(250_001)]
    folded = "\r\n ".join(" ".join(ids[n : n + 50]) for n in range(0, len(ids), 50))
    huge = make_mail(subject="Huge header", headers={"In-Reply-To": "<placeholder@x.y>"})
    imap_client.append(huge.replace(b"<placeholder@x.y>", folded.encode()))  # 2.5 MB
    for n in range(3):
        imap_client.append(make_mail(from_addr=f"canary{n}@kunde.example", subject=f"Canary {n}"))
    config = make_config(dovecot, smtp_sink, db_url)
    result = run_once(config)
    assert result.ingest.acked == 4 and imap_client.count() == 0
    db = open_database(db_url)
    try:
        assert Ticket.select().count() == 4
        assert Message.get(Message.subject == "Huge header").thread_rule == "new"
    finally:
        db.close()
    assert len(smtp_sink.messages) == 4


@pytest.mark.parametrize(
    ("message", "outage"),
    [
        ("database is locked", True),
        ("database or disk is full", True),
        ("disk I/O error", True),
        ("unable to open database file", True),
        ("attempt to write a readonly database", True),
        ("too many SQL variables", False),
        ("string or blob too big", False),
    ],
)
def test_sqlite_errors_are_told_apart_outage_or_this_statement(message: str, outage: bool) -> None:
    try:
        try:
            raise sqlite3.OperationalError(message)
        except sqlite3.OperationalError as exc:
            raise pw.OperationalError(message) from exc
    except pw.OperationalError as error:
        assert is_connection_error(error) is outage


def test_two_different_mails_with_one_message_id_both_become_tickets(
    dovecot: Dovecot, imap_client: ImapTestClient, smtp_sink: SmtpSink, db_url: str
) -> None:
    """Broken mailers reuse Message-IDs: the same id with the same content is a duplicate,
    with another content it is another mail, recorded under a derived id and flagged."""
    first = make_mail(from_addr="a@kunde.example", subject="Drucker", message_id="<same@x.y>")
    second = make_mail(from_addr="b@kunde.example", subject="Login", message_id="<same@x.y>",
                       body="Ich kann mich nicht anmelden.\n")  # fmt: skip
    config = make_config(dovecot, smtp_sink, db_url)
    imap_client.append(first)
    imap_client.append(second)
    imap_client.append(second)  # the same mail delivered twice
    run_once(config)
    db = open_database(db_url)
    try:
        tickets = {t.requester: t for t in Ticket.select()}
        assert set(tickets) == {"a@kunde.example", "b@kunde.example"}
        renamed = Message.get(Message.author_addr == "b@kunde.example")
        assert renamed.message_id.endswith("@reused-message-id.mailtick.invalid>")
        assert "reused Message-ID <same@x.y>" in renamed.flag
        assert Message.select().where(Message.direction == "in").count() == 2
    finally:
        db.close()
    assert sorted(m.rcpt_tos[0] for m in smtp_sink.messages) == [
        "a@kunde.example",
        "b@kunde.example",
    ]
    assert imap_client.count() == 0


def test_a_contact_forms_visitor_is_the_requester_and_gets_the_answers(
    dovecot: Dovecot, imap_client: ImapTestClient, smtp_sink: SmtpSink, db_url: str
) -> None:
    form = "noreply@website.example"
    config = make_config(dovecot, smtp_sink, db_url, tickets={"form_senders": [form]})
    imap_client.append(
        make_mail(
            from_addr=f"Website <{form}>",
            subject="Kontaktformular: Lieferung fehlt",
            headers={"Reply-To": "Vera Besucher <vera@privat.example>"},
        )
    )
    imap_client.append(make_mail(from_addr=f"Website <{form}>", subject="Form without Reply-To"))
    run_once(config)
    [ack] = [m for m in smtp_sink.messages if "vera@privat.example" in m.rcpt_tos]
    assert not [
        m
        for m in smtp_sink.messages
        if form in m.rcpt_tos[0] and "Lieferung" in str(m.message["Subject"])
    ]
    db = open_database(db_url)
    try:
        ticket = Ticket.get(Ticket.subject.contains("Lieferung"))
        assert (ticket.requester, ticket.requester_name) == ("vera@privat.example", "Vera Besucher")
        assert Ticket.get(Ticket.subject.contains("without")).requester == form
    finally:
        db.close()
    imap_client.append(  # Vera answers the acknowledgement: her reply threads into her ticket
        make_mail(
            from_addr="vera@privat.example",
            subject=f"Re: {ack.message['Subject']}",
            in_reply_to=ack.message["Message-ID"],
            body="Die Bestellnummer ist 4711.",
        )
    )
    run_once(config)
    db = open_database(db_url)
    try:
        assert Ticket.select().count() == 2
    finally:
        db.close()


@pytest.mark.parametrize(
    "header",
    [
        {"List-Unsubscribe": "<mailto:unsubscribe@tool.example>"},
        {"Precedence": "bulk"},
        {"X-Auto-Response-Suppress": "All"},
        {"Auto-Submitted": "auto-generated"},
    ],
)
def test_a_persons_mail_with_a_no_answer_header_reaches_the_agents_unanswered(
    desk: Desk, db: pw.Database, imap_client: ImapTestClient, smtp_sink: SmtpSink,
    header: dict[str, str],
) -> None:  # fmt: skip
    """Newsletter tools and some clients add these headers to ordinary mail: they forbid an
    automatic answer, they do not prove that no person wrote."""
    imap_client.append(make_mail(from_addr="kim@kunde.example", subject="Frage", headers=header))
    run_once(desk.config(DANA_AGENT))
    assert len(smtp_sink.to(DANA)) == 1  # the agent is told
    assert smtp_sink.to("kim@kunde.example") == []  # nothing answers automatically
    assert Message.get(Message.author_addr == "kim@kunde.example").kind == "customer"
