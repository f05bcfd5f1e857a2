"""`mailtick demo`: the scripted conversation on embedded servers, in-process and as a command."""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from mailtick import demo
from mailtick.demo import EMMA, JOERG, SUPPORT, Customer, DemoResult, Step

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


def ticket(result: DemoResult, customer: Customer) -> dict[str, object]:
    number = result.numbers[customer.key]
    return next(t for t in result.tickets if t["number"] == number)


def test_the_script_opens_and_threads_tickets_over_real_protocols(private_tmp: Path) -> None:
    result, out, err, left = play()

    assert result.exit_code == 0, f"{result.failure}\n{out}\n{err}"
    assert result.seconds < 30
    joerg, emma = ticket(result, JOERG), ticket(result, EMMA)
    assert joerg["number"] != emma["number"]
    assert (joerg["messages"], joerg["language"], joerg["requester"]) == (3, "de", JOERG.addr)
    assert (emma["messages"], emma["language"], emma["requester"]) == (2, "en", EMMA.addr)
    assert len(result.tickets) == 2
    thread = joerg["thread"]
    assert isinstance(thread, list)
    assert [m["direction"] for m in thread] == ["in", "out", "in"]
    assert thread[2]["thread_rule"] == "in-reply-to"

    # exactly one acknowledgement per ticket, from the support address, naming the ticket
    assert [m.rcpt_to for m in result.delivered] == [(JOERG.addr,), (EMMA.addr,)]
    for mail, number in zip(result.delivered, (joerg["number"], emma["number"]), strict=True):
        assert mail.mail_from == SUPPORT
        assert SUPPORT in str(mail.message["From"])
        assert f"[MT#{number}]" in str(mail.message["Subject"])
        assert str(number) in mail.text
    assert "Guten Tag" in result.delivered[0].text and "Hello" in result.delivered[1].text

    # the printed timeline, the rendered tickets and the way to a real mailbox
    assert f"[MT#{joerg['number']}] Mails an unsere Kunden kommen nicht an" in out
    assert f"MT#{emma['number']}  Invoice PDF missing" in out
    assert "Point mailtick at your real mailbox" in out
    assert "mailtick check-config --connect" in out
    assert "\033[" not in out  # not a terminal: no colours
    assert err == ""

    assert not left, f"threads left running: {left}"
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
            demo.acknowledged(robot),
        ),
    )

    result, out, err, left = play(steps=steps, wait_seconds=1.0)

    assert result.exit_code == 1
    assert result.failure is not None
    assert "step 2 (a robot writes)" in result.failure
    assert f"waited 1 s for an acknowledgement to {robot.addr}" in result.failure
    assert "mailtick demo FAILED: step 2" in err
    assert "mailtick demo FAILED" in out
    assert list(result.numbers) == ["joerg"]
    assert not left, f"threads left running: {left}"
    assert list(private_tmp.iterdir()) == []


def test_colours_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert demo.wants_color(Terminal())
    assert not demo.wants_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not demo.wants_color(Terminal())


def test_mailtick_demo_command(tmp_path: Path) -> None:
    """What `make demo` runs, in a fresh process: exit 0 in well under a minute, no files left."""
    scratch, cwd = tmp_path / "tmp", tmp_path / "cwd"
    scratch.mkdir()
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "MAILTICK_CONFIG")}
    env["TMPDIR"] = str(scratch)
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
    numbers = re.findall(r"new ticket MT#(\d+), acknowledged", proc.stdout)
    assert len(numbers) == 2
    assert re.search(rf"threaded into MT#{numbers[0]} by in-reply-to: 3 messages", proc.stdout)
    assert "mailtick demo done in" in proc.stdout
    assert list(scratch.iterdir()) == [] and list(cwd.iterdir()) == []
