"""The daemon as sysadmins run it (`mailtick run`): IDLE, polling, IMAP restarts, SIGTERM."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

from harness import daemon_process, settings, wait_until, write_config
from servers import Dovecot, ImapTestClient, SmtpSink, make_mail


def _append_and_time_ack(client: ImapTestClient, sink: SmtpSink, n: int) -> float:
    raw = make_mail(
        from_addr=f"c{n}@customer.example",
        subject=f"Server down {n}",
        body="Our web server is down.",
    )
    before = len(sink.messages)
    start = time.monotonic()
    client.append(raw)
    sink.wait_for(before + 1, timeout=15)
    return time.monotonic() - start


def test_idle_wakes_the_daemon_within_a_second(
    dovecot: Dovecot, imap_client: ImapTestClient, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "config.toml", settings(dovecot, smtp_sink, f"sqlite:///{tmp_path}/t.db")
    )
    with daemon_process(config, tmp_path / "daemon.log") as proc:
        delays = sorted(_append_and_time_ack(imap_client, smtp_sink, n) for n in range(5))
        assert delays[2] < 1.0, delays  # the median; polling would take poll_interval (30 s)
        assert dovecot.used_command("IDLE")
        wait_until(lambda: imap_client.count("Processed") == 5, 5)
    assert proc.returncode == 0  # SIGTERM is a clean stop
    assert "mailtick stopped" in (tmp_path / "daemon.log").read_text()


def test_polling_when_the_server_has_no_idle(
    dovecot_factory: Callable[..., Dovecot], smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    server = dovecot_factory(idle=False)
    data = settings(server, smtp_sink, f"sqlite:///{tmp_path}/t.db", imap={"poll_interval": 0.5})
    config = write_config(tmp_path / "config.toml", data)
    with server.client() as client, daemon_process(config, tmp_path / "daemon.log"):
        assert _append_and_time_ack(client, smtp_sink, 1) < 5
    assert not server.used_command("IDLE")
    assert "polling every 0.5s" in (tmp_path / "daemon.log").read_text()


def test_imap_server_restarted_under_the_daemon(
    dovecot: Dovecot, imap_client: ImapTestClient, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "config.toml", settings(dovecot, smtp_sink, f"sqlite:///{tmp_path}/t.db")
    )
    log = tmp_path / "daemon.log"
    with daemon_process(config, log):
        _append_and_time_ack(imap_client, smtp_sink, 1)
        dovecot.stop(graceful=False)  # the server vanishes mid-IDLE
        wait_until(lambda: "reconnecting" in log.read_text(), 15)
        dovecot.start()
        with dovecot.client() as client:
            assert _append_and_time_ack(client, smtp_sink, 2) < 10
            wait_until(lambda: client.count("Processed") == 2, 5)
    assert len(smtp_sink.messages) == 2


def test_mail_arriving_during_a_catch_up_is_not_left_until_the_idle_timeout(
    dovecot: Dovecot, imap_client: ImapTestClient, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    backlog = [  # 300 customers: one customer gets at most limits.daily_per_address mails a day
        make_mail(from_addr=f"c{n}@customer.example", subject=f"Backlog {n}", body="Call me.")
        for n in range(300)
    ]
    imap_client.append_many(backlog)
    data = settings(dovecot, smtp_sink, f"sqlite:///{tmp_path}/t.db", imap={"idle_timeout": 600})
    config = write_config(tmp_path / "config.toml", data)
    with daemon_process(config, tmp_path / "daemon.log"):
        smtp_sink.wait_for(1, timeout=20)  # the catch-up is under way
        imap_client.append(make_mail(subject="Late arrival", body="Our shop is offline."))
        smtp_sink.wait_for(301, timeout=20)  # not after the 600 s IDLE timeout
    subjects = [m.message["Subject"] for m in smtp_sink.messages]
    assert any(s.endswith("Late arrival") for s in subjects)


def test_sighup_reloads_a_valid_config_and_keeps_the_old_one_otherwise(
    dovecot: Dovecot, imap_client: ImapTestClient, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    data = settings(dovecot, smtp_sink, f"sqlite:///{tmp_path}/t.db")
    path = write_config(tmp_path / "config.toml", data)
    log = tmp_path / "daemon.log"
    with daemon_process(path, log) as proc:
        _append_and_time_ack(imap_client, smtp_sink, 1)
        data["smtp"]["from_address"] = "Renamed Support <support@example.com>"
        write_config(path, data)
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: log.read_text().count("IMAP connected") == 2, 20)
        _append_and_time_ack(imap_client, smtp_sink, 2)
        assert smtp_sink.messages[-1].message["From"].addresses[0].display_name == "Renamed Support"

        path.write_text('[imap]\nport = "abc"\n')  # broken: the running config must stay
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "keeping the running configuration" in log.read_text(), 10)
        _append_and_time_ack(imap_client, smtp_sink, 3)
        assert proc.poll() is None
    assert proc.returncode == 0
    assert 'imap.port: expected an integer, got "abc"' in log.read_text()
