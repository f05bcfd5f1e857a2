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


def test_init_creates_the_reply_secret_once_and_new_opens_a_phone_ticket(
    dovecot: Dovecot, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    data = settings(
        dovecot,
        smtp_sink,
        f"sqlite:///{tmp_path}/t.db",
        security={"secret_file": "state/reply-secret"},
        agents=[{"name": "dana", "addresses": ["dana@example.com"]}],
    )
    config = write_config(tmp_path / "c.toml", data)
    missing = mailtick("check-config", "-c", str(config))
    assert missing.returncode == 2 and "mailtick init" in missing.stderr
    first = mailtick("init", "-c", str(config))
    secret = tmp_path / "state" / "reply-secret"
    assert first.returncode == 0 and "created" in first.stdout
    assert secret.stat().st_mode & 0o777 == 0o600 and len(bytes.fromhex(secret.read_text())) == 32
    content = secret.read_text()
    assert mailtick("init", "-c", str(config)).returncode == 0 and secret.read_text() == content

    body = tmp_path / "call.txt"
    body.write_text("Kunde ruft an: Drucker im 3. Stock druckt nicht.\n")
    new = mailtick(
        "new",
        "-c",
        str(config),
        "--customer",
        "anna@kunde.example",
        "--subject",
        "Drucker druckt nicht",
        "--body-file",
        str(body),
    )
    assert new.returncode == 0, new.stderr
    number = new.stdout.strip().removeprefix("MT#")
    ack = [m for m in smtp_sink.wait_for(2) if "anna@kunde.example" in m.rcpt_tos]
    assert ack and ack[0].message["Subject"] == f"[MT#{number}] Drucker druckt nicht"
    assert any("dana@example.com" in m.rcpt_tos for m in smtp_sink.messages)
    bad = mailtick(
        "new",
        "-c",
        str(config),
        "--customer",
        "not an address",
        "--subject",
        "x",
        "--body-file",
        str(body),
    )
    assert bad.returncode == 1 and "not a usable mail address" in bad.stderr


def test_quarantine_list_show_requeue_and_drop(
    dovecot: Dovecot, imap_client: ImapTestClient, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    small = {"max_mail_bytes": 20_000}
    data = settings(dovecot, smtp_sink, f"sqlite:///{tmp_path}/t.db", tickets=small)
    config = write_config(tmp_path / "c.toml", data)
    big = make_mail(subject="Scan", attachments=[("scan.pdf", "application/pdf", b"x" * 40_000)])
    other = make_mail(
        subject="Second scan", attachments=[("b.pdf", "application/pdf", b"y" * 40_000)]
    )
    imap_client.append(big)
    imap_client.append(other)
    assert mailtick("run", "--once", "-c", str(config)).returncode == 0
    assert imap_client.count("Quarantine") == 2

    listed = json.loads(mailtick("quarantine", "list", "--json", "-c", str(config)).stdout)
    assert [(r["subject"], "max_mail_bytes" in r["reason"]) for r in listed] == [
        ("Scan", True),
        ("Second scan", True),
    ]
    first, second = listed[0]["id"], listed[1]["id"]
    raw = mailtick("quarantine", "show", str(first), "--raw", "-c", str(config))
    # Too big to download: only its header was fetched and kept (text mode reads \n).
    assert big.decode().replace("\r\n", "\n").startswith(raw.stdout) and len(raw.stdout) < 2000
    assert "Subject: Scan" in raw.stdout
    entry = json.loads(mailtick("quarantine", "show", str(second), "-c", str(config)).stdout)
    assert (entry["size"], entry["stored"]) == (len(other), "header only")
    assert Path(entry["file"]).parent == dovecot.root / "mailtick-quarantine"

    # The limit is raised; requeue puts the mail back and the next run makes a ticket of it.
    data["tickets"]["max_mail_bytes"] = 10_000_000
    write_config(tmp_path / "c.toml", data)
    requeued = mailtick("quarantine", "requeue", str(first), "-c", str(config))
    assert requeued.returncode == 0 and "moved from Quarantine back to INBOX" in requeued.stdout
    assert imap_client.count("Quarantine") == 1 and imap_client.count("INBOX") == 1
    assert "fetched 1" in mailtick("run", "--once", "-c", str(config)).stdout
    shown = json.loads(mailtick("tickets", "--json", "-c", str(config)).stdout)
    assert [t["subject"] for t in shown] == ["Scan"]

    dropped = mailtick("quarantine", "drop", str(second), "-c", str(config))
    assert dropped.returncode == 0 and not Path(entry["file"]).exists()
    assert json.loads(mailtick("quarantine", "list", "--json", "-c", str(config)).stdout) == []
    missing = mailtick("quarantine", "show", "999", "-c", str(config))
    assert missing.returncode == 1 and "no entry 999" in missing.stderr
