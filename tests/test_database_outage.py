"""The database goes away under a running daemon and comes back (real PostgreSQL, Dovecot)."""

from __future__ import annotations

import time
from pathlib import Path

from harness import daemon_process, settings, wait_until, write_config
from servers import Dovecot, SmtpSink, make_mail, terminate_backends


def test_after_its_connections_are_terminated_the_daemon_reconnects_and_goes_on(
    dovecot: Dovecot, smtp_sink: SmtpSink, postgres_url: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "config.toml", settings(dovecot, smtp_sink, postgres_url))
    log = tmp_path / "daemon.log"
    with dovecot.client() as imap, daemon_process(config, log):
        imap.append(make_mail(from_addr="first@kunde.example", subject="Before"))
        wait_until(lambda: len(smtp_sink.messages) == 1, 20)
        for round_ in range(2):  # twice: the second outage finds the new connections
            assert terminate_backends(postgres_url) >= 1
            for n in range(5):
                imap.append(
                    make_mail(from_addr=f"r{round_}n{n}@kunde.example", subject=f"After {n}")
                )
            started, wanted = time.monotonic(), 1 + 5 * (round_ + 1)
            wait_until(lambda: len(smtp_sink.messages) == wanted, 30)  # noqa: B023
            assert time.monotonic() - started < 30
        wait_until(lambda: imap.count() == 0, 10)
    text = log.read_text()
    assert "database unavailable" in text  # the outage was seen and said, one line per try
    assert "Traceback" not in text
