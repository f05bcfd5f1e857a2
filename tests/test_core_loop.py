"""The core loop end to end: real Dovecot, real aiosmtpd sink, real SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import peewee as pw
import pytest
from harness import SUPPORT, make_config, run_once
from servers import Dovecot, ImapTestClient, SmtpSink, make_mail

from mailtick.db import Message, Outbox, Ticket, open_database, utcnow
from mailtick.numbers import is_valid

CUSTOMER = "Jörg Beispiel <joerg@kunde.example>"
GERMAN_BODY = (
    "Guten Tag,\n\nseit heute Morgen kommen unsere Mails an Kunden nicht mehr an. "
    "Wir bekommen eine Fehlermeldung zurück, dass der Empfänger abgelehnt wurde. "
    "Können Sie bitte nachsehen, was mit unserem Postfach los ist?\n\nViele Grüße\nJörg\n"
)
ENGLISH_BODY = (
    "Hello,\n\nsince this morning none of our outgoing mails reach our customers. "
    "We get a bounce saying the recipient was rejected. Could you please have a look "
    "at our mailbox?\n\nBest regards\nJane\n"
)


def only_ticket() -> Ticket:
    tickets = list(Ticket.select())
    assert len(tickets) == 1, [t.number for t in tickets]
    return tickets[0]


def test_new_mail_becomes_ticket_with_german_acknowledgement(
    dovecot: Dovecot, imap_client: ImapTestClient, smtp_sink: SmtpSink, db_url: str, db: pw.Database
) -> None:
    raw = make_mail(from_addr=CUSTOMER, subject="Mails kommen nicht an", body=GERMAN_BODY)
    imap_client.append(raw)
    result = run_once(make_config(dovecot, smtp_sink, db_url))

    assert (result.ingest.fetched, result.ingest.acked, result.send.sent) == (1, 1, 1)
    ticket = only_ticket()
    assert is_valid(ticket.number) and ticket.status == "open"
    assert (ticket.requester, ticket.requester_name, ticket.language) == (
        "joerg@kunde.example",
        "Jörg Beispiel",
        "de",
    )
    incoming = Message.get(Message.direction == "in")
    assert incoming.thread_rule == "new" and bytes(incoming.data) == raw

    [ack] = smtp_sink.wait_for(1)
    header = ack.message
    assert ack.rcpt_tos == ["joerg@kunde.example"] and ack.mail_from == SUPPORT
    assert header["From"].addresses[0].addr_spec == SUPPORT
    assert header["To"].addresses[0].display_name == "Jörg Beispiel"
    assert header["Subject"] == f"[MT#{ticket.number}] Mails kommen nicht an"
    assert header["In-Reply-To"] == incoming.message_id
    assert incoming.message_id in header["References"]
    assert header["Auto-Submitted"] == "auto-replied"
    assert header["Content-Language"] == "de"
    assert Message.get(Message.direction == "out").message_id == header["Message-ID"]
    body = header.get_content()
    assert ticket.number in body and "Ticket" in body and "Guten Tag" in body
    # Only after the commit was the mail moved out of the inbox.
    assert imap_client.count("INBOX") == 0
    assert imap_client.message_ids("Processed") == [incoming.message_id]


def test_english_mail_gets_english_acknowledgement(
    dovecot: Dovecot, imap_client: ImapTestClient, smtp_sink: SmtpSink, sqlite_url: str
) -> None:
    imap_client.append(
        make_mail(from_addr="jane@customer.example", subject="Mail bounces", body=ENGLISH_BODY)
    )
    run_once(make_config(dovecot, smtp_sink, sqlite_url, tickets={"default_language": "de"}))
    [ack] = smtp_sink.wait_for(1)
    assert ack.message.get_content().startswith("Hello")


def _first_ticket(
    dovecot: Dovecot, client: ImapTestClient, sink: SmtpSink, url: str
) -> tuple[str, str]:
    """Open one ticket; return (customer Message-ID, our acknowledgement's Message-ID)."""
    raw = make_mail(from_addr=CUSTOMER, subject="Mails kommen nicht an", body=GERMAN_BODY)
    client.append(raw)
    run_once(make_config(dovecot, sink, url))
    [ack] = sink.wait_for(1)
    return ack.message["In-Reply-To"], ack.message["Message-ID"]


@pytest.mark.parametrize(
    ("how", "rule"),
    [("in-reply-to", "in-reply-to"), ("references", "references"), ("subject-tag", "subject-tag")],
)
def test_reply_threads_into_its_ticket(
    dovecot: Dovecot,
    imap_client: ImapTestClient,
    smtp_sink: SmtpSink,
    db_url: str,
    db: pw.Database,
    how: str,
    rule: str,
) -> None:
    customer_id, ack_id = _first_ticket(dovecot, imap_client, smtp_sink, db_url)
    number = only_ticket().number
    in_reply_to, references = {  # the headers of the reply, as its mail client wrote them
        "in-reply-to": (ack_id, [customer_id, ack_id]),
        "references": (None, ["<unknown@elsewhere.example>", ack_id]),
        "subject-tag": (None, []),
    }[how]
    subject = f"AW: [MT#{number}] Mails kommen nicht an" if how == "subject-tag" else "AW: Mails"
    imap_client.append(
        make_mail(
            from_addr=CUSTOMER,
            subject=subject,
            body="Hier die Fehlermeldung.",
            in_reply_to=in_reply_to,
            references=references,
        )
    )
    result = run_once(make_config(dovecot, smtp_sink, db_url))

    assert result.ingest.acked == 1 and result.send.sent == 0  # a reply is not acknowledged again
    ticket = only_ticket()
    reply = Message.select().where(Message.direction == "in").order_by(Message.id.desc()).get()
    assert reply.ticket_id == ticket.id and reply.thread_rule == rule
    assert len(smtp_sink.messages) == 1


def test_subject_tag_with_wrong_check_digit_opens_new_ticket(
    dovecot: Dovecot, imap_client: ImapTestClient, smtp_sink: SmtpSink, sqlite_url: str
) -> None:
    _first_ticket(dovecot, imap_client, smtp_sink, sqlite_url)
    db = open_database(sqlite_url)
    number = only_ticket().number
    mistyped = number[:-1] + str((int(number[-1]) + 1) % 10)
    assert not is_valid(mistyped)
    imap_client.append(
        make_mail(
            from_addr="other@customer.example", subject=f"Re: [MT#{mistyped}] Frage", body="Hallo?"
        )
    )
    run_once(make_config(dovecot, smtp_sink, sqlite_url))

    numbers = [t.number for t in Ticket.select().order_by(Ticket.id)]
    assert len(numbers) == 2 and numbers[0] == number
    assert (
        Message.select().where(Message.ticket == Ticket.get(Ticket.number == number)).count() == 2
    )
    assert len(smtp_sink.wait_for(2)) == 2  # the new ticket was acknowledged
    db.close()


def test_same_mail_delivered_twice_is_recorded_once(
    dovecot: Dovecot, imap_client: ImapTestClient, smtp_sink: SmtpSink, db_url: str, db: pw.Database
) -> None:
    raw = make_mail(from_addr=CUSTOMER, subject="Doppelt", body=GERMAN_BODY)
    imap_client.append(raw)
    imap_client.append(raw)
    result = run_once(make_config(dovecot, smtp_sink, db_url))
    imap_client.append(raw)  # and once more, in a later run
    second = run_once(make_config(dovecot, smtp_sink, db_url))

    assert (result.ingest.acked, second.ingest.acked) == (2, 1)
    assert Ticket.select().count() == 1
    assert Message.select().where(Message.direction == "in").count() == 1
    assert len(smtp_sink.messages) == 1
    assert imap_client.count("INBOX") == 0 and imap_client.count("Processed") == 3


@pytest.mark.parametrize(("closed_days_ago", "reopens"), [(3, True), (45, False)])
def test_reply_to_closed_ticket(
    dovecot: Dovecot,
    imap_client: ImapTestClient,
    smtp_sink: SmtpSink,
    db_url: str,
    db: pw.Database,
    closed_days_ago: int,
    reopens: bool,
) -> None:
    _, ack_id = _first_ticket(dovecot, imap_client, smtp_sink, db_url)
    old = only_ticket()
    closed_at = utcnow() - timedelta(days=closed_days_ago)
    Ticket.update(status="closed", closed_at=closed_at).where(Ticket.id == old.id).execute()
    imap_client.append(
        make_mail(
            from_addr=CUSTOMER,
            subject="AW: Mails",
            body="Es geht wieder nicht.",
            in_reply_to=ack_id,
        )
    )
    run_once(make_config(dovecot, smtp_sink, db_url, tickets={"reopen_days": 30}))

    if reopens:
        ticket = only_ticket()
        assert ticket.status == "open" and ticket.closed_at is None
        assert len(smtp_sink.messages) == 1
    else:
        old, new = list(Ticket.select().order_by(Ticket.id))
        assert old.status == "closed" and new.status == "open"
        assert new.linked_to_id == old.id
        [reply] = Message.select().where((Message.ticket == new) & (Message.direction == "in"))
        assert "closed too long" in reply.thread_detail
        assert smtp_sink.wait_for(2)[1].message["Subject"].startswith(f"[MT#{new.number}]")


def test_automatic_mail_is_recorded_but_never_answered(
    dovecot: Dovecot, imap_client: ImapTestClient, smtp_sink: SmtpSink, sqlite_url: str
) -> None:
    imap_client.append(
        make_mail(
            from_addr="robot@customer.example",
            subject="Abwesenheitsnotiz",
            body="Ich bin bis Montag nicht im Büro.",
            headers={"Auto-Submitted": "auto-replied"},
        )
    )
    result = run_once(make_config(dovecot, smtp_sink, sqlite_url))
    db = open_database(sqlite_url)
    assert Ticket.select().count() == 1 and Message.get().kind == "automatic"
    assert result.send.sent == 0 and smtp_sink.messages == []
    db.close()


def test_oversized_mail_is_quarantined_not_dropped(
    dovecot: Dovecot, imap_client: ImapTestClient, smtp_sink: SmtpSink, sqlite_url: str
) -> None:
    big = make_mail(subject="Scan", attachments=[("scan.pdf", "application/pdf", b"x" * 200_000)])
    small = make_mail(subject="Printer", body="The printer is broken again, please help us today.")
    imap_client.append(big)
    imap_client.append(small)
    result = run_once(
        make_config(dovecot, smtp_sink, sqlite_url, tickets={"max_mail_bytes": 100_000})
    )

    assert (result.ingest.quarantined, result.ingest.acked) == (1, 1)
    assert imap_client.fetch_all("Quarantine") == [big]
    assert imap_client.count("Processed") == 1 and imap_client.count("INBOX") == 0
    db = open_database(sqlite_url)
    from mailtick.db import Quarantine

    [row] = Quarantine.select()
    assert "max_mail_bytes is 100000" in row.reason and row.size == len(big)
    kept = Path(row.path).read_bytes()  # the header only, in the quarantine directory
    assert big.startswith(kept) and b"Subject: Scan" in kept and len(kept) < 2000
    db.close()
    # Sizes were fetched first and the big mail's body never crossed the wire.
    log = dovecot.log_text()
    [session] = re.findall(
        r"imap\(\S+\)<(\d+)>\S*: Debug: Command finished: UID FETCH \S+ \(UID RFC822\.SIZE\)", log
    )
    [sent] = re.findall(rf"<{session}>\S*: Info: Disconnected: Logged out in=\d+ out=(\d+)", log)
    assert int(sent) < 20_000 < len(big)


def test_smtp_451_is_retried_and_delivered_once(
    dovecot: Dovecot, imap_client: ImapTestClient, smtp_sink: SmtpSink, db_url: str, db: pw.Database
) -> None:
    imap_client.append(make_mail(from_addr=CUSTOMER, subject="Hilfe", body=GERMAN_BODY))
    smtp_sink.fail_next(1, 451, "4.3.0 try again later")
    first = run_once(make_config(dovecot, smtp_sink, db_url))

    assert (first.ingest.acked, first.send.sent, first.send.deferred) == (1, 0, 1)
    assert Ticket.select().count() == 1  # SMTP trouble never blocks ingest
    row = Outbox.get()
    assert (row.status, row.attempts) == ("pending", 1) and "451" in row.last_error
    Outbox.update(next_attempt_at=utcnow()).execute()  # the retry is due now
    second = run_once(make_config(dovecot, smtp_sink, db_url))
    third = run_once(make_config(dovecot, smtp_sink, db_url))

    assert (second.send.sent, third.send.sent) == (1, 0)
    assert len(smtp_sink.messages) == 1 and smtp_sink.attempts == 2
    row = Outbox.get()
    assert (row.status, row.attempts) == ("sent", 2)


def test_smtp_550_is_recorded_as_failed_with_the_answer(
    dovecot: Dovecot, imap_client: ImapTestClient, smtp_sink: SmtpSink, sqlite_url: str
) -> None:
    imap_client.append(make_mail(from_addr=CUSTOMER, subject="Hilfe", body=GERMAN_BODY))
    smtp_sink.fail_next(5, 550, "5.7.1 relaying denied")
    result = run_once(make_config(dovecot, smtp_sink, sqlite_url))
    again = run_once(make_config(dovecot, smtp_sink, sqlite_url))

    assert (result.send.failed, again.send.failed, again.send.sent) == (1, 0, 0)
    db = open_database(sqlite_url)
    row = Outbox.get()
    assert row.status == "failed" and row.last_error == "550 5.7.1 relaying denied"
    assert smtp_sink.attempts == 1
    db.close()


def test_smtp_server_down_does_not_block_ingest(
    dovecot: Dovecot, imap_client: ImapTestClient, tmp_path: Path, sqlite_url: str
) -> None:
    sink = SmtpSink()  # configured but never started: connection refused
    imap_client.append(make_mail(from_addr=CUSTOMER, subject="Hilfe", body=GERMAN_BODY))
    result = run_once(make_config(dovecot, sink, sqlite_url))
    assert (result.ingest.acked, result.send.deferred) == (1, 1)
    assert imap_client.count("Processed") == 1
    db = open_database(sqlite_url)
    assert Outbox.get().status == "pending" and "connect" in Outbox.get().last_error
    db.close()


@pytest.mark.parametrize("security", ["starttls", "none"])
def test_imap_security_modes(
    dovecot: Dovecot,
    imap_client: ImapTestClient,
    smtp_sink: SmtpSink,
    sqlite_url: str,
    security: str,
) -> None:
    imap_client.append(make_mail(subject="Printer", body="The printer on floor 3 is broken again."))
    config = make_config(
        dovecot, smtp_sink, sqlite_url, imap={"port": dovecot.port, "security": security}
    )
    assert run_once(config).ingest.acked == 1
    [login] = [line for line in dovecot.log_text().splitlines() if "Login: user=<support@" in line][
        -1:
    ]
    # Dovecot marks a login over TLS with ", TLS"; a plain loopback login says ", secured".
    assert (", TLS," in login) == (security == "starttls")


def test_server_without_move_gets_copy_and_expunge(
    dovecot_factory: Callable[..., Dovecot], smtp_sink: SmtpSink, sqlite_url: str
) -> None:
    server = dovecot_factory(move=False)
    with server.client() as client:
        for n in range(3):
            client.append(make_mail(subject=f"Request {n}", body="Please call me back today."))
        result = run_once(make_config(server, smtp_sink, sqlite_url))
        assert result.ingest.acked == 3
        assert client.count("INBOX") == 0 and client.count("Processed") == 3
    assert server.used_command("COPY") and server.used_command("EXPUNGE")
    assert not server.used_command("MOVE")


@pytest.mark.slow
def test_backlog_of_2000_mails(
    dovecot: Dovecot, imap_client: ImapTestClient, smtp_sink: SmtpSink, sqlite_url: str
) -> None:
    """aioimaplib recurses once per answer line: every answer must stay bounded."""
    raws = [
        make_mail(from_addr=f"c{n}@customer.example", subject=f"Request {n}", body="Please help.")
        for n in range(2000)
    ]
    imap_client.append_many(raws)
    result = run_once(make_config(dovecot, smtp_sink, sqlite_url))

    assert (result.ingest.fetched, result.ingest.acked, result.send.sent) == (2000, 2000, 2000)
    assert imap_client.count("INBOX") == 0 and imap_client.count("Processed") == 2000
    db = open_database(sqlite_url)
    assert Ticket.select().count() == 2000
    assert len({t.number for t in Ticket.select()}) == 2000
    db.close()


AUTOMATIC_SIGNALS: list[tuple[str, dict[str, str], str]] = [
    ("auto-submitted", {"Auto-Submitted": "auto-replied"}, "ooo@customer.example"),
    ("auto-generated", {"Auto-Submitted": "auto-generated"}, "monitor@customer.example"),
    ("precedence bulk", {"Precedence": "bulk"}, "news@customer.example"),
    ("precedence junk", {"Precedence": "junk"}, "junk@customer.example"),
    ("precedence list", {"Precedence": "list"}, "list1@customer.example"),
    ("list-id", {"List-Id": "<users.lists.example>"}, "list2@customer.example"),
    (
        "list-unsubscribe",
        {"List-Unsubscribe": "<mailto:u@lists.example>"},
        "list3@customer.example",
    ),
    ("x-auto-response-suppress", {"X-Auto-Response-Suppress": "All"}, "exchange@customer.example"),
    ("null return-path", {"Return-Path": "<>"}, "bounce@customer.example"),
    ("mailer-daemon", {}, "MAILER-DAEMON@customer.example"),
    ("noreply", {}, "noreply@customer.example"),
    ("our loop header", {"X-Mailtick-Loop": "support@example.com 10019"}, "loop@customer.example"),
]


NO_ANSWER_SIGNALS = {
    "auto-generated",
    "precedence bulk",
    "precedence junk",
    "list-unsubscribe",
    "x-auto-response-suppress",
}


def test_no_automatic_answer_to_automatic_mail_but_each_is_recorded(
    dovecot: Dovecot, imap_client: ImapTestClient, smtp_sink: SmtpSink, sqlite_url: str
) -> None:
    for name, headers, sender in AUTOMATIC_SIGNALS:
        imap_client.append(
            make_mail(
                from_addr=sender, subject=f"Signal: {name}", body="Automatic.", headers=headers
            )
        )
    imap_client.append(
        make_mail(from_addr="human@customer.example", subject="Control", body="A person writes.")
    )
    result = run_once(make_config(dovecot, smtp_sink, sqlite_url))
    assert result.ingest.acked == len(AUTOMATIC_SIGNALS) + 1
    [ack] = smtp_sink.messages  # the control mail, and only it
    assert ack.rcpt_tos == ["human@customer.example"]
    db = open_database(sqlite_url)
    kinds = {m.subject: m.kind for m in Message.select().where(Message.direction == "in")}
    # a robot's mail is stored as automatic; a header that only forbids an answer leaves the
    # mail a person's (classify.NO_ANSWER_RULES): stored as the customer's, still unanswered
    for name, _, _ in AUTOMATIC_SIGNALS:
        expected = "customer" if name in NO_ANSWER_SIGNALS else "automatic"
        assert kinds[f"Signal: {name}"] == expected, name
    assert kinds["Control"] == "customer"
    db.close()
