"""`mailtick demo`: the scripted conversation on embedded servers, in-process and as a command."""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from email.utils import parseaddr
from pathlib import Path
from typing import IO, Any

import pytest

from mailtick import demo
from mailtick.demo import BEA, BERT, DANA, JOERG, SUPPORT, Customer, Delivered, DemoResult, Step

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tempfile's directory for this test, so we can see that the demo leaves nothing behind."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def play(
    steps: Sequence[Step] = demo.SCRIPT, wait_seconds: float = demo.WAIT_SECONDS
) -> tuple[DemoResult, str, str, set[threading.Thread]]:
    """Run the demo in-process; (result, stdout, stderr, threads it left running)."""
    before = set(threading.enumerate())
    out, err = io.StringIO(), io.StringIO()
    result = asyncio.run(demo.play(out, err, steps=steps, wait_seconds=wait_seconds))
    deadline = time.monotonic() + 5
    while (left := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    return result, out.getvalue(), err.getvalue(), left


def ticket(result: DemoResult, key: str) -> dict[str, Any]:
    number = result.numbers[key]
    return next(t for t in result.tickets if t["number"] == number)


def to(result: DemoResult, addr: str) -> list[Delivered]:
    return [m for m in result.delivered if m.rcpt_to == (addr,)]


def sender(mail: Delivered) -> tuple[str, str]:
    return parseaddr(str(mail.message["From"]))


def test_the_script_plays_over_real_protocols(private_tmp: Path) -> None:
    result, out, err, left = play()

    assert result.exit_code == 0, f"{result.failure}\n{out}\n{err}"
    assert result.seconds < 30
    first, second = ticket(result, "mail"), ticket(result, "wifi")
    mail_tag, wifi_tag = f"[MT#{first['number']}]", f"[MT#{second['number']}]"

    # Jörg's two tickets, linked; the first closed by Dana, the second open and Jörg's
    assert len(result.tickets) == 3 and first["number"] != second["number"]
    assert second["linked_to"] == first["number"] and first["links"] == [second["number"]]
    assert (first["status"], first["owner"], first["language"]) == ("closed", "dana", "de")
    assert (second["status"], second["requester"]) == ("open", JOERG.addr)
    assert "WLAN" in second["subject"]
    agent_mails = [m for m in first["thread"] if m["kind"] == "agent"]
    assert [m["thread_rule"] for m in agent_mails] == ["reply-token", "reply-token"]

    # Jörg got: acknowledgement, Dana's answer, the drift warning, the mail naming both numbers
    ack, answer, warning, split = to(result, JOERG.addr)
    for mail in (ack, answer, warning, split):
        assert mail.mail_from == SUPPORT and sender(mail)[1] == SUPPORT
        assert DANA.addr.encode() not in mail.raw  # the agent's address never reaches him
    assert mail_tag in ack.subject and first["number"] in ack.text
    assert sender(answer)[0] == "Dana Example via Example Support" and mail_tag in answer.subject
    assert "v=spf1 mx" in answer.text and "Neues Ticket" not in answer.text  # no quote
    assert mail_tag in warning.subject and "NEU" in warning.text.split()
    wifi_mail = next(m for m in second["thread"] if "WLAN" in m["text"])
    assert warning.message["In-Reply-To"] == wifi_mail["message_id"]
    assert wifi_tag in split.subject and mail_tag in split.text

    # Bea's invoice: routed to billing, where Bert (not Dana) hears of it
    invoice = ticket(result, "invoice")
    assert (invoice["queue"], invoice["requester"]) == ("billing", BEA.addr)
    assert [e["detail"] for e in invoice["events"] if e["kind"] == "routed"] == [
        "queue billing (rule invoices), priority normal"
    ]
    [told] = to(result, BERT.addr)
    assert f"[MT#{invoice['number']}]" in told.subject

    # Dana: notifications with a reply token; her two replies went to such an address
    notifications = to(result, DANA.addr)
    assert len(notifications) == 4
    for note in notifications:
        assert note.mail_from == SUPPORT
        assert str(note.message["Reply-To"]).startswith("support+r-")
    from_dana = [m for m in result.delivered if m.mail_from == DANA.addr]
    assert len(from_dana) == 2
    for mail in from_dana:
        [rcpt] = mail.rcpt_to
        assert rcpt.startswith(f"support+r-{first['number']}-") and demo.is_support(rcpt)
    assert "#close" in from_dana[1].text

    # the printed timeline, the rendered tickets and the way to a real mailbox
    assert "(into the support INBOX)" in out and "topic-drift warning sent" in out
    assert f"MT#{first['number']}  Mails an unsere Kunden kommen nicht an" in out
    assert f"continued in MT#{second['number']}" in out
    assert f"follows MT#{first['number']}" in out
    assert "Point mailtick at your real mailbox" in out
    assert "mailtick check-config --connect" in out
    assert "\033[" not in out  # not a terminal: no colours
    assert err == ""

    assert not left, f"threads left running: {left}"
    assert not multiprocessing.active_children()
    assert list(private_tmp.iterdir()) == []


def test_a_failed_expectation_exits_1_with_a_clear_message_and_cleans_up(
    private_tmp: Path,
) -> None:
    robot = Customer("robot", "Mailer Daemon", "mailer-daemon@kunde.example", "en")
    steps = (
        demo.SCRIPT[0],
        Step(  # mailtick rightly never answers a robot, so this expectation cannot hold
            "a robot writes",
            demo.writes(robot, "Undelivered Mail Returned to Sender", "550 no such user\n"),
            (demo.acknowledged(robot, "robot"),),
        ),
    )

    result, out, err, left = play(steps=steps, wait_seconds=1.0)

    assert result.exit_code == 1
    assert result.failure is not None
    assert "step 2 (a robot writes)" in result.failure
    assert f"waited 1 s for an acknowledgement to {robot.addr}" in result.failure
    assert "mailtick demo FAILED: step 2" in err
    assert "mailtick demo FAILED" in out
    assert list(result.numbers) == ["mail"]
    assert not left, f"threads left running: {left}"
    assert list(private_tmp.iterdir()) == []


def test_ctrl_c_during_the_script_is_no_failure(private_tmp: Path) -> None:
    async def ctrl_c(session: Any) -> None:  # the daemon's SIGINT handler stops it
        os.kill(os.getpid(), signal.SIGINT)

    steps = (
        demo.SCRIPT[0],
        Step("Ctrl-C", ctrl_c, (demo.acknowledged(JOERG, "never"),)),
    )

    result, out, err, left = play(steps=steps)

    assert (result.exit_code, result.state, result.failure) == (130, "interrupted", None)
    assert "FAIL" not in out and err == ""
    assert "mailtick demo interrupted in" in out
    assert not left, f"threads left running: {left}"
    assert list(private_tmp.iterdir()) == []


def test_plus_addresses_of_support_are_delivered_locally() -> None:
    assert demo.is_support("support@example.com")
    assert demo.is_support("Support+r-10019-20780-abcdefghijklmnopqrstuvwxyz@Example.com")
    assert not demo.is_support("dana@example.com")
    assert not demo.is_support("support@example.org")
    assert not demo.is_support("supporter+r-1@example.com")
    raw = demo.local_delivery(b"Subject: x\r\n\r\nbody\r\n", DANA.addr, "support+n-1@example.com")
    assert raw.startswith(b"Return-Path: <dana@example.com>\r\nDelivered-To: support+n-1@")


def test_colours_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert demo.wants_color(Terminal())
    assert not demo.wants_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not demo.wants_color(Terminal())


def demo_env(tmp_path: Path) -> tuple[dict[str, str], Path, Path]:
    scratch, cwd = tmp_path / "tmp", tmp_path / "cwd"
    scratch.mkdir()
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "MAILTICK_CONFIG")}
    env["TMPDIR"] = str(scratch)
    return env, scratch, cwd


def test_mailtick_demo_command(tmp_path: Path) -> None:
    """What `make demo` runs, in a fresh process: exit 0 in well under a minute, no files left."""
    env, scratch, cwd = demo_env(tmp_path)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "mailtick", "demo"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=cwd,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.monotonic() - started < 60
    first, invoice = re.findall(r"new ticket MT#(\d+), acknowledged", proc.stdout)
    assert f"[MT#{invoice}] routed: queue billing (rule invoices)" in proc.stdout
    assert re.search(rf"new ticket \[MT#\d+\] .*, linked to \[MT#{first}\]", proc.stdout)
    assert f"[MT#{first}] closed by dana" in proc.stdout
    assert "mailtick demo done in" in proc.stdout
    assert list(scratch.iterdir()) == [] and list(cwd.iterdir()) == []


def read_until(stream: IO[str], marker: str) -> str:
    seen: list[str] = []
    for line in iter(stream.readline, ""):
        seen.append(line)
        if marker in line:
            break
    return "".join(seen)


def test_keep_running_explains_the_agent_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    env, scratch, cwd = demo_env(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailtick", "demo", "--keep-running"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env,
    )
    killer = threading.Timer(60, proc.kill)  # a hanging demo fails this test, not the suite
    killer.start()
    try:
        assert proc.stdout is not None
        shown = read_until(proc.stdout, "--body '#close'")
        proc.send_signal(signal.SIGINT)
        rest, errors = proc.communicate(timeout=60)
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == 0, shown + rest + errors
    assert "Still running. Send mail to it; Ctrl-C stops everything" in shown
    assert "AGENT dana: Dana Example <dana@example.com>" in shown
    assert "to a notification's Reply-To address acts as" in shown
    [wifi] = re.findall(r"new ticket \[MT#(\d+)\]", shown)
    assert re.search(rf"--to support\+r-{wifi}-\d+-[a-z2-7]{{26}}@example\.com", shown)
    assert "mailtick demo done in" in rest
    assert list(scratch.iterdir()) == [] and list(cwd.iterdir()) == []
