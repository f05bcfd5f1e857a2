"""Durability: a mailbox restored under a new UIDVALIDITY, and SIGTERM at awkward moments.

Real Dovecot, real SMTP sink, SQLite and PostgreSQL. The UIDVALIDITY test runs the daemon
in-process (`run --once`); the SIGTERM tests run `mailtick run` as a process, as systemd does,
and time its exit. Run with -s to see the measured stop times.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import (
    daemon_process,
    make_config,
    run_once,
    settings,
    wait_until,
    write_config,
)
from servers import HOST, Dovecot, ImapTestClient, SmtpSink, make_mail

STOP_BOUND = 15.0  # seconds from SIGTERM to exit, whatever the daemon is doing
MAILBOXES = ("INBOX", "Processed", "Quarantine")


def _request(n: int) -> tuple[str, bytes]:
    """(Message-ID, raw) of customer n's new request (a subject of its own: no send cap)."""
    message_id = f"<req-{n}@customer.example>"
    raw = make_mail(
        from_addr=f"Customer {n} <customer{n}@customer.example>",
        subject=f"Order {n} arrived damaged",
        body=f"Hello,\n\norder {n} arrived with a broken screen.\nPlease send a new one.\n",
        message_id=message_id,
    )
    return message_id, raw


def _query(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    """Read the daemon's database through a connection of our own (never writing)."""
    if db_url.startswith("sqlite:///"):
        path = db_url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as lite:
            return lite.execute(sql).fetchall()
    import psycopg2

    with contextlib.closing(psycopg2.connect(db_url)) as pg, pg.cursor() as cur:
        cur.execute(sql)
        rows: list[tuple[Any, ...]] = cur.fetchall()
        pg.rollback()
        return rows


def _count(db_url: str, sql: str) -> int:
    [(value,)] = _query(db_url, sql)
    return int(value)


def _incoming_ids(db_url: str) -> list[str]:
    return [
        str(mid)
        for (mid,) in _query(db_url, "SELECT message_id FROM message WHERE direction = 'in'")
    ]


def _on_server(client: ImapTestClient) -> int:
    """Every mail the account holds: INBOX, Processed and Quarantine."""
    return sum(client.count(mailbox) for mailbox in MAILBOXES)


def _acknowledged(sink: SmtpSink) -> Counter[str]:
    """How often each customer mail was acknowledged (by the acks' In-Reply-To)."""
    return Counter(str(mail.message["In-Reply-To"]).strip() for mail in sink.messages)


# -- UIDVALIDITY -------------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["uidlist-rebuilt", "doveadm-update"])
def test_a_restore_under_a_new_uidvalidity_loses_duplicates_and_deletes_nothing(
    dovecot: Dovecot,
    smtp_sink: SmtpSink,
    db_url: str,
    change: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An admin restores INBOX from a backup: copies of mails handled long ago come back
    beside mails that arrived since, and the mailbox has a new UIDVALIDITY.
    uidlist-rebuilt: the mail files came back without Dovecot's index, so Dovecot numbers
    them from UID 1 again (below the daemon's cursor: only a rescan finds them).
    doveadm-update: `doveadm mailbox update --uid-validity`, the UIDs stay."""
    config = make_config(dovecot, smtp_sink, db_url)
    handled = [_request(n) for n in range(6)]
    with dovecot.client() as client:
        client.append_many([raw for _, raw in handled])
    first = run_once(config)
    assert (first.ingest.acked, first.send.sent) == (6, 6)
    old = dovecot.mailbox_status()["uidvalidity"]

    restored, arrived = handled[:3], [_request(n) for n in range(6, 9)]
    with dovecot.client() as client:
        client.append_many([raw for _, raw in restored + arrived])
    if change == "uidlist-rebuilt":
        dovecot.forget_uids()
    else:
        dovecot.set_uidvalidity(old + 1000)
    new = dovecot.mailbox_status()["uidvalidity"]
    assert new != old
    with dovecot.client() as client:
        if change == "uidlist-rebuilt":
            assert client.uids() == [1, 2, 3, 4, 5, 6]  # at or below the cursor (6)
        before = _on_server(client)

    with caplog.at_level(logging.INFO, logger="mailtick"):
        second = run_once(config)
    assert f"UIDVALIDITY of INBOX changed {old} -> {new}" in caplog.text
    assert (second.ingest.fetched, second.ingest.acked, second.ingest.quarantined) == (6, 6, 0)
    for message_id, _ in restored:  # matched by Message-ID: logged, not recorded again
        assert any(
            message_id in line and "duplicate Message-ID" in line
            for line in caplog.text.splitlines()
        ), message_id

    # The database: every mail once, one ticket per request, one acknowledgement each.
    expected = {mid for mid, _ in handled + arrived}
    incoming = _incoming_ids(db_url)
    assert sorted(incoming) == sorted(expected)
    assert _count(db_url, "SELECT COUNT(*) FROM ticket") == 9
    assert _acknowledged(smtp_sink) == dict.fromkeys(expected, 1)

    # The server: nothing deleted, nothing left; the restored copies sit beside the originals.
    with dovecot.client() as client:
        assert _on_server(client) == before
        assert client.count("INBOX") == 0 and client.count("Quarantine") == 0
        processed = Counter(client.message_ids("Processed"))
    assert processed == {mid: 2 if (mid, raw) in restored else 1 for mid, raw in handled} | {
        mid: 1 for mid, _ in arrived
    }

    # A restart after all that: nothing to do, nothing sent again.
    third = run_once(config)
    assert (third.ingest.fetched, third.send.sent) == (0, 0)
    assert len(smtp_sink.messages) == 9


# -- SIGTERM -----------------------------------------------------------------------------------


def _sigterm(proc: subprocess.Popen[bytes], log: Path) -> float:
    """SIGTERM the daemon; assert it exits 0 within STOP_BOUND and says so; the seconds."""
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=STOP_BOUND)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running {STOP_BOUND:g}s after SIGTERM; log {log}") from None
    seconds = time.monotonic() - start
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert "stopping (SIGTERM)" in text and "mailtick stopped" in text, text[-3000:]
    print(f"\nSIGTERM to exit: {seconds:.2f}s ({log.name})")
    return seconds


@contextlib.contextmanager
def _silent_server() -> Iterator[int]:
    """A port on 127.0.0.1 whose connections the kernel accepts but nobody ever answers:
    a server that hangs (before its greeting, or mid-conversation for all a client knows)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((HOST, 0))
        listener.listen(64)
        yield int(listener.getsockname()[1])


@pytest.mark.slow
def test_sigterm_during_a_backlog_finishes_the_mail_in_hand_and_a_restart_the_rest(
    dovecot: Dovecot, smtp_sink: SmtpSink, db_url: str, tmp_path: Path
) -> None:
    mails = [_request(n) for n in range(300)]
    expected = {mid for mid, _ in mails}
    with dovecot.client() as client:
        client.append_many([raw for _, raw in mails])
    config = write_config(tmp_path / "config.toml", settings(dovecot, smtp_sink, db_url))
    tickets = "SELECT COUNT(*) FROM ticket"

    first_log = tmp_path / "first.log"
    with daemon_process(config, first_log) as proc:
        wait_until(lambda: _count(db_url, tickets) > 0, 30, step=0.02)
        _sigterm(proc, first_log)
    with dovecot.client() as client:
        left = set(client.message_ids("INBOX"))
        moved = set(client.message_ids("Processed"))
    recorded = set(_incoming_ids(db_url))
    assert left, "the whole backlog was handled before the stop: SIGTERM came too late"
    assert moved <= recorded  # nothing left the inbox without its ticket
    assert left | recorded == expected  # nothing lost

    second_log = tmp_path / "second.log"
    pending = "SELECT COUNT(*) FROM outbox WHERE status <> 'sent'"
    with daemon_process(config, second_log) as proc, dovecot.client() as client:
        wait_until(
            lambda: client.count("INBOX") == 0 and _count(db_url, pending) == 0, 60, step=0.2
        )
        _sigterm(proc, second_log)

    incoming = _incoming_ids(db_url)
    assert len(incoming) == len(expected) and set(incoming) == expected
    assert _count(db_url, tickets) == len(expected)
    with dovecot.client() as client:
        assert client.count("INBOX") == 0 and client.count("Quarantine") == 0
        assert Counter(client.message_ids("Processed")) == dict.fromkeys(expected, 1)
    assert _acknowledged(smtp_sink) == dict.fromkeys(expected, 1)


def test_sigterm_while_the_imap_server_is_down_or_hangs(
    dovecot: Dovecot, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    """Down: the daemon is between reconnect attempts. Hangs: a server that accepts the
    connection and never greets, with the default 60 s IMAP timeout."""
    db_url = f"sqlite:///{tmp_path}/mailtick.db"
    data = settings(dovecot, smtp_sink, db_url, imap={"timeout": 60, "reconnect_max": 30})
    config = write_config(tmp_path / "config.toml", data)
    down_log = tmp_path / "down.log"
    with daemon_process(config, down_log) as proc:
        dovecot.stop(graceful=False)
        wait_until(lambda: "reconnecting" in down_log.read_text(), 15)
        _sigterm(proc, down_log)

    hang_log = tmp_path / "hang.log"
    with _silent_server() as port:
        data["imap"]["port"] = port
        write_config(config, data)
        with daemon_process(config, hang_log, ready=b"mailtick started") as proc:
            time.sleep(0.5)  # in the TLS handshake / waiting for the greeting
            _sigterm(proc, hang_log)
    assert "IMAP connected" not in hang_log.read_text()


def test_sigterm_while_smtp_hangs_then_a_restart_sends_each_ack_once(
    dovecot: Dovecot, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    """The SMTP server accepts connections and never answers (default 60 s SMTP timeout):
    the tickets are made meanwhile, the stop does not wait for SMTP, and the next daemon
    sends every acknowledgement exactly once."""
    db_url = f"sqlite:///{tmp_path}/mailtick.db"
    mails = [_request(n) for n in range(3)]
    with dovecot.client() as client:
        client.append_many([raw for _, raw in mails])
    data = settings(dovecot, smtp_sink, db_url, smtp={"timeout": 60})
    config = tmp_path / "config.toml"
    hang_log = tmp_path / "hang.log"
    with _silent_server() as port:
        data["smtp"]["port"] = port
        write_config(config, data)
        with daemon_process(config, hang_log) as proc:
            wait_until(lambda: _count(db_url, "SELECT COUNT(*) FROM ticket") == 3, 20)
            time.sleep(0.5)  # the sender is connecting to the silent server
            _sigterm(proc, hang_log)
    assert _count(db_url, "SELECT COUNT(*) FROM outbox WHERE status = 'pending'") == 3
    assert smtp_sink.messages == []

    data["smtp"]["port"] = smtp_sink.port
    write_config(config, data)
    with daemon_process(config, tmp_path / "send.log"):
        smtp_sink.wait_for(3, timeout=20)
        wait_until(
            lambda: _count(db_url, "SELECT COUNT(*) FROM outbox WHERE status = 'sent'") == 3, 10
        )
    assert _acknowledged(smtp_sink) == {mid: 1 for mid, _ in mails}
