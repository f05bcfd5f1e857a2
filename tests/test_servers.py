"""Tests of the test infrastructure (tests/servers.py, conftest fixtures); starts real servers."""

from __future__ import annotations

import imaplib
import os
import smtplib
import socket
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import pytest

# tests/servers.py: pytest puts tests/ on sys.path (tests/ has no __init__.py).
from servers import (
    Dovecot,
    ImapTestClient,
    SmtpSecurity,
    SmtpSink,
    free_port,
    make_mail,
    parse_mail,
)

# -- Dovecot ---------------------------------------------------------------------------------


def test_free_port_never_hands_out_a_port_twice() -> None:
    """Dovecot takes two ports at once; a repeat made it fail with "duplicate listener"
    (3 in 20,000 pairs). 5,000 draws from the OS's ephemeral range repeat almost surely."""
    ports = [free_port() for _ in range(5000)]
    assert len(set(ports)) == len(ports)


def test_append_and_fetch_round_trip_over_plain_imap(imap_client: ImapTestClient) -> None:
    raw = make_mail(subject="Drucker kaputt", message_id="<one@customer.example>")

    uid = imap_client.append(raw)

    assert imap_client.uids() == [uid]
    assert imap_client.count() == 1
    assert imap_client.fetch_all() == [raw]
    assert imap_client.message_ids() == ["<one@customer.example>"]


def test_implicit_tls_port_trusting_cert_path(dovecot: Dovecot) -> None:
    context = ssl.create_default_context(cafile=str(dovecot.cert_path))
    with imaplib.IMAP4_SSL(dovecot.host, dovecot.tls_port, ssl_context=context) as imap:
        imap.login("support@example.com", "secret")
        assert isinstance(imap.sock, ssl.SSLSocket)
        imap.append("INBOX", None, None, make_mail(message_id="<tls@customer.example>"))

    with ImapTestClient(dovecot.host, dovecot.tls_port, ssl_context=dovecot.ssl_context()) as c:
        assert c.message_ids() == ["<tls@customer.example>"]


def test_starttls_on_plain_port(dovecot: Dovecot) -> None:
    with imaplib.IMAP4(dovecot.host, dovecot.port) as imap:
        assert "STARTTLS" in imap.capabilities
        imap.starttls(dovecot.ssl_context())
        assert isinstance(imap.sock, ssl.SSLSocket)
        typ, _ = imap.login("support@example.com", "secret")
        assert typ == "OK"


def test_wrong_password_is_refused(dovecot: Dovecot) -> None:
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        ImapTestClient(dovecot.host, dovecot.port, "support@example.com", "wrong")


def _capabilities(dovecot: Dovecot) -> tuple[set[str], set[str], set[str]]:
    """(greeting, sent with the LOGIN OK, answer to CAPABILITY after login)."""
    with imaplib.IMAP4(dovecot.host, dovecot.port) as imap:
        greeting = set(imap.capabilities)
        imap.login("support@example.com", "secret")
        # Dovecot puts the post-login list into the LOGIN reply: "OK [CAPABILITY ...]".
        sent = imap.untagged_responses["CAPABILITY"][-1]
        assert isinstance(sent, bytes)
        after_login = set(sent.decode().upper().split())
        typ, data = imap.capability()
        assert typ == "OK"
        asked = set(data[-1].decode().upper().split())
    return greeting, after_login, asked


def test_default_dovecot_offers_idle_and_move(dovecot: Dovecot) -> None:
    greeting, after_login, asked = _capabilities(dovecot)
    assert "IDLE" in greeting
    assert {"IDLE", "MOVE", "UIDPLUS", "LITERAL+"} <= after_login
    assert after_login == asked


@pytest.mark.parametrize(
    ("options", "missing", "kept"),
    [({"idle": False}, "IDLE", "MOVE"), ({"move": False}, "MOVE", "IDLE")],
)
def test_capability_can_be_removed(
    dovecot_factory: Callable[..., Dovecot], options: dict[str, bool], missing: str, kept: str
) -> None:
    greeting, after_login, asked = _capabilities(dovecot_factory(**options))

    assert missing not in greeting | after_login | asked
    assert kept in after_login and kept in asked
    assert {"UIDPLUS", "LITERAL+", "IMAP4REV1"} <= asked


def test_commands_log_shows_what_a_client_sent(
    imap_client: ImapTestClient, dovecot: Dovecot
) -> None:
    imap_client.create("Processed")
    uid = imap_client.append(make_mail())
    imap_client.imap.select("INBOX")
    assert imap_client.imap.uid("MOVE", str(uid), "Processed")[0] == "OK"

    assert dovecot.wait_for_command("MOVE") == f"UID MOVE {uid} Processed"
    assert dovecot.used_command("MOVE", user="support@example.com")
    assert not dovecot.used_command("IDLE", settle=0.1)  # session still open: no exact answer
    imap_client.close()
    assert not dovecot.used_command("IDLE")  # returns as soon as the session end is logged
    assert not dovecot.open_sessions()


def test_restart_keeps_ports_and_mail(dovecot: Dovecot) -> None:
    with dovecot.client() as client:
        client.append(make_mail(message_id="<before@customer.example>"))
    port, tls_port = dovecot.port, dovecot.tls_port

    dovecot.restart()

    assert (dovecot.port, dovecot.tls_port) == (port, tls_port)
    with dovecot.client() as client:
        assert client.message_ids() == ["<before@customer.example>"]


@pytest.mark.parametrize("graceful", [True, False])
def test_stop_leaves_nothing_running(dovecot: Dovecot, graceful: bool) -> None:
    client = dovecot.client()  # an open session: one more child process to clean up
    pid = dovecot._process.pid if dovecot._process else 0

    dovecot.stop(graceful=graceful)

    assert not dovecot.running
    assert not _alive_in_process_group(pid)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((dovecot.host, dovecot.port), timeout=2)
    # What the open session saw: a shutdown notice, or (killed) just the connection closing.
    client.imap.sock.settimeout(2)
    expected = b"* BYE Server shutting down.\r\n" if graceful else b""
    assert client.imap.sock.recv(4096) == expected
    client.close()  # must not raise although the server is gone


def _alive_in_process_group(pgid: int) -> list[int]:
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            alive.append(int(pid))
    return alive


def test_add_user_while_running(dovecot: Dovecot) -> None:
    dovecot.add_user("sales@example.com", "s3cret")
    with dovecot.client("sales@example.com") as client:
        client.append(make_mail(to_addr="sales@example.com"))
        assert client.count() == 1
    with dovecot.client() as client:
        assert client.count() == 0  # separate mail store per user


def test_mailboxes_are_created_by_client_unless_auto_create(
    imap_client: ImapTestClient, dovecot_factory: Callable[..., Dovecot]
) -> None:
    assert imap_client.mailboxes() == ["INBOX"]
    imap_client.create("Processed")
    assert sorted(imap_client.mailboxes()) == ["INBOX", "Processed"]

    auto = dovecot_factory(auto_create=["Processed", "Quarantine"])
    with auto.client() as client:
        assert sorted(client.mailboxes()) == ["INBOX", "Processed", "Quarantine"]


def test_append_many_keeps_order_and_bytes(imap_client: ImapTestClient) -> None:
    # 600: more than one MULTIAPPEND batch (500 mails each).
    raws = [make_mail(message_id=f"<bulk{i}@customer.example>") for i in range(600)]

    uids = imap_client.append_many(raws)

    assert uids == list(range(1, 601))
    assert imap_client.count() == 600
    assert imap_client.message_ids() == [f"<bulk{i}@customer.example>" for i in range(600)]
    assert imap_client.fetch_all()[-1] == raws[-1]


def test_start_failure_reports_log_tail() -> None:
    broken = Dovecot(binary="/bin/false")
    try:
        with pytest.raises(RuntimeError, match="Dovecot did not come up"):
            broken.start()
    finally:
        broken.close()


# -- make_mail -------------------------------------------------------------------------------


def test_make_mail_builds_a_realistic_mail() -> None:
    raw = make_mail(
        from_addr="Jörg Kunde <joerg@customer.example>",
        subject="Re: Rechnung März",
        body="Grüße\n",
        in_reply_to="<a@example.com>",
        references=["<root@example.com>", "<a@example.com>"],
        date=datetime(2024, 3, 1, 12, 0, tzinfo=UTC),
        headers={"Auto-Submitted": "auto-replied"},
        attachments=[("invoice.pdf", "application/pdf", b"%PDF-1.4 fake")],
        html="<p>Grüße</p>",
    )
    message = parse_mail(raw)

    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    assert message["Subject"] == "Re: Rechnung März"
    assert message["From"].addresses[0].display_name == "Jörg Kunde"
    assert message["To"] == "support@example.com"
    assert message["Message-ID"].endswith("@customer.example>")
    assert message["References"] == "<root@example.com> <a@example.com>"
    assert message["Date"].datetime == datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
    assert message["Auto-Submitted"] == "auto-replied"
    body = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert body is not None and body.get_content() == "Grüße\r\n"  # CRLF: it came as bytes
    assert html is not None and "<p>Grüße</p>" in html.get_content()
    [attachment] = message.iter_attachments()
    assert attachment.get_filename() == "invoice.pdf"
    assert attachment.get_content() == b"%PDF-1.4 fake"


# -- SmtpSink --------------------------------------------------------------------------------


def test_smtp_sink_records_a_mail(smtp_sink: SmtpSink) -> None:
    raw = make_mail(subject="Ihre Anfrage [MT#10017]", from_addr="support@example.com")
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port) as smtp:
        smtp.sendmail("support@example.com", ["alice@customer.example"], raw)

    [mail] = smtp_sink.wait_for(1)
    assert mail.mail_from == "support@example.com"
    assert mail.rcpt_tos == ["alice@customer.example"]
    assert mail.raw == raw
    assert mail.message["Subject"] == "Ihre Anfrage [MT#10017]"
    assert smtp_sink.attempts == 1


def test_smtp_sink_temporary_then_permanent_failure(smtp_sink: SmtpSink) -> None:
    smtp_sink.fail_next(1, 451)
    smtp_sink.fail_next(1, 550, "5.7.1 rejected")
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port) as smtp:
        for code in (451, 550):
            with pytest.raises(smtplib.SMTPDataError) as refused:
                smtp.sendmail("support@example.com", ["a@customer.example"], make_mail())
            assert refused.value.smtp_code == code
        smtp.sendmail("support@example.com", ["a@customer.example"], make_mail())

    assert len(smtp_sink.wait_for(1)) == 1
    assert smtp_sink.attempts == 3


def test_smtp_sink_wait_for_times_out_with_details(smtp_sink: SmtpSink) -> None:
    with pytest.raises(AssertionError, match="expected 1 mail"):
        smtp_sink.wait_for(1, timeout=0.1)


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_smtp_sink_tls_with_auth(security: SmtpSecurity) -> None:
    with SmtpSink(security=security, auth=("mailer", "pw")) as sink:
        context = sink.ssl_context()
        smtp = (
            smtplib.SMTP_SSL(sink.host, sink.port, context=context)
            if security == "tls"
            else smtplib.SMTP(sink.host, sink.port)
        )
        with smtp:
            if security == "starttls":
                smtp.starttls(context=context)
            with pytest.raises(smtplib.SMTPAuthenticationError):
                smtp.login("mailer", "wrong")
            smtp.login("mailer", "pw")
            smtp.sendmail("support@example.com", ["a@customer.example"], make_mail())
        [mail] = sink.wait_for(1)
        assert mail.auth_user == "mailer"


def test_smtp_sink_with_auth_refuses_unauthenticated_mail() -> None:
    with SmtpSink(auth=("mailer", "pw")) as sink, smtplib.SMTP(sink.host, sink.port) as smtp:
        with pytest.raises(smtplib.SMTPSenderRefused):
            smtp.sendmail("support@example.com", ["a@customer.example"], make_mail())
        assert sink.messages == []


# -- databases -------------------------------------------------------------------------------


def test_db_url_gives_an_empty_database(db_url: str) -> None:
    if db_url.startswith("sqlite:///"):
        path = Path(db_url.removeprefix("sqlite:///"))
        assert path.is_absolute() and path.parent.is_dir() and not path.exists()
        return
    assert db_url.startswith("postgresql://postgres@127.0.0.1:5432/mt_test_")
    with psycopg2.connect(db_url) as connection, connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema='public'")
        assert cur.fetchone() == (0,)
        cur.execute("CREATE TABLE t (id integer)")  # usable, owned by us
    connection.close()
