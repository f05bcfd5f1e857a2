"""The command line as a sysadmin or a script uses it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from harness import REPO, mailtick, settings, write_config
from servers import Dovecot, ImapTestClient, SmtpSink, make_mail


def test_check_config_on_the_example_names_what_is_missing() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILTICK_")}
    result = mailtick("check-config", "-c", str(REPO / "config.toml"), env=env)
    assert result.returncode == 2
    assert (
        "imap.password_env: environment variable MAILTICK_IMAP_PASSWORD is not set" in result.stderr
    )
    assert (
        "smtp.password_env: environment variable MAILTICK_SMTP_PASSWORD is not set" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_check_config_reports_a_bad_value_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[imap]\nport = "abc"\n')
    result = mailtick("check-config", "-c", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert 'imap.port: expected an integer, got "abc"' in result.stderr


def test_check_config_connect_logs_in_to_both_servers(
    dovecot: Dovecot, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    good = write_config(
        tmp_path / "good.toml", settings(dovecot, smtp_sink, f"sqlite:///{tmp_path}/t.db")
    )
    result = mailtick("check-config", "--connect", "-c", str(good))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "imap: OK" in result.stdout and "smtp: OK" in result.stdout

    data = settings(dovecot, smtp_sink, f"sqlite:///{tmp_path}/t.db", imap={"password": "wrong"})
    result = mailtick(
        "check-config", "--connect", "-c", str(write_config(tmp_path / "bad.toml", data))
    )
    assert result.returncode == 1
    assert "imap: FAILED" in result.stdout and "LOGIN" in result.stdout


def test_run_once_then_tickets_and_show(
    dovecot: Dovecot, imap_client: ImapTestClient, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "c.toml", settings(dovecot, smtp_sink, f"sqlite:///{tmp_path}/t.db")
    )
    imap_client.append(
        make_mail(
            from_addr="Jane <jane@customer.example>",
            subject="VPN down",
            body="Our VPN is down since noon.",
        )
    )
    run = mailtick("run", "--once", "-c", str(config))
    assert run.returncode == 0, run.stderr
    assert "fetched 1" in run.stdout and "sent 1" in run.stdout
    assert "new ticket" in run.stderr  # one log line per mail and outcome

    listed = json.loads(mailtick("tickets", "--json", "-c", str(config)).stdout)
    assert [(t["subject"], t["status"], t["messages"]) for t in listed] == [("VPN down", "open", 2)]
    number = listed[0]["number"]

    shown = json.loads(mailtick("show", f"MT#{number}", "--json", "-c", str(config)).stdout)
    incoming, ack = shown["thread"]
    assert (incoming["author"], incoming["thread_rule"]) == ("jane@customer.example", "new")
    assert ack["kind"] == "ack" and ack["delivery"]["status"] == "sent"

    text = mailtick("show", number, "-c", str(config)).stdout
    assert f"MT#{number}  VPN down" in text and "opened the ticket" in text
    missing = mailtick("show", "99999", "-c", str(config))
    assert missing.returncode == 1 and "no ticket" in missing.stderr
