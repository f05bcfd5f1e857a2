"""The poison cap: a mail that fails again and again is quarantined after 3 tries, and never
blocks the mails behind it. Real Dovecot, SMTP sink, SQLite and the real daemon process.

The poison here is honest: a 4 MB mail of 40,000 MIME parts that mail-parser needs seconds
for. With `imap.parse_timeout` at 0.5 s its parse fails every time; with parsing on the
database thread (parse_workers = 0) the test kills the daemon with SIGKILL while it is in
that mail, the way a mail that crashes the process would.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from harness import REPO, make_config, run_once, settings, spawn_daemon, wait_until, write_config
from servers import Dovecot, ImapTestClient, SmtpSink, make_mail, slow_mail, stop_process

from mailtick.db import Attempt, Quarantine, Ticket, open_database


def requests(count: int, start: int = 0) -> list[bytes]:
    return [
        make_mail(
            from_addr=f"customer{n}@customer.example",
            subject=f"Printer {n} broken",
            body=f"Printer number {n} on the second floor prints only empty pages.",
        )
        for n in range(start, start + count)
    ]


def test_a_mail_whose_parse_times_out_is_quarantined_after_3_tries_and_blocks_nothing(
    dovecot: Dovecot, imap_client: ImapTestClient, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    config = make_config(dovecot, smtp_sink, url, imap={"parse_timeout": 0.5})
    poison = slow_mail()
    for mail in [*requests(3), poison, *requests(3, start=3)]:
        imap_client.append(mail)

    first = run_once(config)
    # The six good mails are tickets; the poison waits in INBOX for another try.
    assert (first.ingest.acked, first.ingest.retry, first.ingest.quarantined) == (6, 1, 0)
    assert imap_client.fetch_all("INBOX") == [poison]
    assert len(smtp_sink.wait_for(6)) == 6

    imap_client.append(requests(1, start=6)[0])  # arrives behind the poison
    second = run_once(config)
    assert (second.ingest.acked, second.ingest.retry) == (1, 1)  # not blocked by it

    third = run_once(config)
    assert (third.ingest.quarantined, third.ingest.retry) == (1, 0)
    assert [m[:60] for m in imap_client.fetch_all("INBOX")] == []
    assert imap_client.fetch_all("Quarantine") == [poison]
    db = open_database(url)
    [row] = Quarantine.select()
    assert row.reason.startswith("poison: 3 tries failed (parsing took longer than")
    assert Path(row.path).read_bytes() == poison  # the whole mail, kept for the sysadmin
    assert Ticket.select().count() == 7 and Attempt.select().count() == 0
    db.close()


@pytest.mark.slow
def test_a_mail_that_kills_the_daemon_is_quarantined_after_3_crashes(
    dovecot: Dovecot, imap_client: ImapTestClient, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    db_path = tmp_path / "t.db"
    data = settings(dovecot, smtp_sink, f"sqlite:///{db_path}", imap={"parse_workers": 0})
    config = write_config(tmp_path / "c.toml", data)
    poison = slow_mail()
    good = requests(4)
    for mail in [poison, *good]:
        imap_client.append(mail)

    kills = 0
    for expected_try in (1, 2, 3):
        log = tmp_path / f"daemon-{expected_try}.log"
        proc = spawn_daemon(config, log)
        try:

            def tried(n: int = expected_try) -> bool:
                return tries_of(db_path, uid=1) == n

            # The try is committed before the mail is handled; kill the daemon inside it.
            wait_until(tried, 30)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
        finally:
            stop_process(proc)
    assert kills == 3 and imap_client.count("INBOX") == 5  # nothing handled, nothing lost

    log = tmp_path / "daemon-last.log"
    proc = spawn_daemon(config, log)
    try:
        wait_until(lambda: imap_client.count("Processed") == 4, 30)
        wait_until(lambda: imap_client.count("Quarantine") == 1, 10)
    finally:
        stop_process(proc)
    text = log.read_text()
    assert "poison: 3 tries failed (the daemon stopped while handling it)" in text
    assert imap_client.fetch_all("Quarantine") == [poison]
    listed = json.loads(
        subprocess.run(
            [sys.executable, "-m", "mailtick", "quarantine", "list", "--json", "-c", str(config)],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        ).stdout
    )
    assert [(r["subject"], r["stored"]) for r in listed] == [("Many parts", "whole mail")]
    acknowledged = sorted(str(m.message["Subject"]) for m in smtp_sink.wait_for(4))
    assert acknowledged == sorted(
        f"[MT#{n}] Printer {i} broken" for i, n in enumerate(ticket_numbers(db_path))
    )


def tries_of(db_path: Path, uid: int) -> int:
    if not db_path.exists():
        return 0
    with sqlite3.connect(db_path, timeout=5) as conn:
        try:
            found = conn.execute("SELECT count FROM attempt WHERE uid = ?", (uid,)).fetchone()
        except sqlite3.OperationalError:  # the schema is not there yet
            return 0
    return int(found[0]) if found else 0


def ticket_numbers(db_path: Path) -> list[str]:
    with sqlite3.connect(db_path, timeout=5) as conn:
        return [n for (n,) in conn.execute("SELECT number FROM ticket ORDER BY id")]
