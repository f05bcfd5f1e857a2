"""systemd notification: sd_notify datagrams on a real socket, the watchdog policy, the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import settings, spawn_daemon, write_config
from servers import Dovecot, ImapTestClient, SmtpSink, make_mail, stop_process, terminate_backends

from mailtick.notify import Notifier, health_text, keep_alive


class Receiver:
    """The systemd end: a bound AF_UNIX datagram socket that collects what arrives."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.messages: list[str] = []

    def next(self, timeout: float = 5.0) -> str:
        self.sock.settimeout(timeout)
        message = self.sock.recv(4096).decode()
        self.messages.append(message)
        return message

    def wait_for(self, condition: Callable[[list[str]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition(self.messages):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"not received within {timeout}s: {self.messages}")
            with contextlib.suppress(TimeoutError):
                self.next(left)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[Receiver, str]]:
    path = tmp_path / "notify"
    assert len(str(path)) < 100  # sun_path holds 108 bytes
    receiver = Receiver(str(path))
    yield receiver, str(path)
    receiver.sock.close()


def test_ready_status_watchdog_stopping_through_a_real_socket(
    receiver: tuple[Receiver, str],
) -> None:
    systemd, path = receiver
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.ready("started: support@imap.example.com/INBOX")
    assert systemd.next() == "READY=1\nSTATUS=started: support@imap.example.com/INBOX"
    notifier.watchdog()
    assert systemd.next() == "WATCHDOG=1"
    notifier.status("IMAP unreachable:\nreconnecting")  # one line, always
    assert systemd.next() == "STATUS=IMAP unreachable: reconnecting"
    notifier.stopping()
    assert systemd.next() == "STOPPING=1\nSTATUS=stopping"


def test_an_abstract_socket_name() -> None:
    name = f"mailtick-test-{uuid.uuid4().hex}"
    systemd = Receiver("\0" + name)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.ready("up")
        notifier.watchdog()
        assert [systemd.next(), systemd.next()] == ["READY=1\nSTATUS=up", "WATCHDOG=1"]
    finally:
        systemd.sock.close()


@pytest.mark.parametrize("value", [None, "", "relative/notify", "vsock:2:1234", "@"])
def test_without_a_usable_notify_socket_nothing_is_sent(value: str | None) -> None:
    notifier = Notifier({} if value is None else {"NOTIFY_SOCKET": value})
    assert not notifier.enabled
    assert not notifier.send("READY=1")
    notifier.ready("up")
    notifier.watchdog()
    notifier.stopping()


def test_the_environment_is_read_when_none_is_given(
    receiver: tuple[Receiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    systemd, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    Notifier().watchdog()
    assert systemd.next() == "WATCHDOG=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not Notifier().enabled


@pytest.mark.parametrize("where", ["missing", "too-long", "not-a-socket"])
def test_a_send_that_fails_is_logged_at_debug_and_never_raises(
    where: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = {
        "missing": tmp_path / "gone",
        "too-long": tmp_path / ("x" * 200),
        "not-a-socket": tmp_path / "file",
    }
    paths["not-a-socket"].write_text("")
    notifier = Notifier({"NOTIFY_SOCKET": str(paths[where])})
    with caplog.at_level(logging.DEBUG, logger="mailtick.notify"):
        assert not notifier.send("WATCHDOG=1")
        notifier.ready("up")
    assert "sd_notify 'WATCHDOG=1'" in caplog.text


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "120000000"}, 60.0),
        ({"WATCHDOG_USEC": "1000"}, 0.0005),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": str(os.getpid())}, 60.0),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "me"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "2min"}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    env: dict[str, str], interval: float | None
) -> None:
    assert Notifier(env).watchdog_interval() == interval


# --- the watchdog policy (keep_alive) -----------------------------------------------------------


class Recorder(Notifier):
    """A Notifier that records what it would send, labelled with the test's current phase."""

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__({"NOTIFY_SOCKET": "/run/systemd/notify", **env})
        self.phase = "start"
        self.sent: list[tuple[str, str]] = []

    def send(self, *fields: str) -> bool:
        self.sent.extend((self.phase, field) for field in fields)
        return True

    def pings(self, phase: str) -> int:
        return sum(1 for p, field in self.sent if p == phase and field == "WATCHDOG=1")

    def statuses(self) -> list[str]:
        return [field.removeprefix("STATUS=") for _, field in self.sent if "STATUS=" in field]


async def _phase(recorder: Recorder, name: str, seconds: float) -> None:
    recorder.phase = name
    await asyncio.sleep(seconds)


def test_watchdog_pings_while_connected_and_through_a_short_outage_only() -> None:
    recorder = Recorder({"WATCHDOG_USEC": "100000"})  # ping every 0.05 s
    grace = 0.6

    async def scenario() -> None:
        connected, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(keep_alive(recorder, connected, stop, grace=grace))
        await _phase(recorder, "start", 0.2)  # not connected yet: within the grace
        connected.set()
        await _phase(recorder, "up", 0.2)
        connected.clear()
        await _phase(recorder, "blip", 0.2)  # a short outage: still pinging
        await _phase(recorder, "outage", grace)
        await _phase(recorder, "long outage", 0.3)  # past the grace: silence
        connected.set()
        await _phase(recorder, "back", 0.2)
        stop.set()
        await asyncio.wait_for(task, 1)

    asyncio.run(scenario())
    for phase in ("start", "up", "blip", "back"):
        assert recorder.pings(phase) >= 2, (phase, recorder.sent)
    assert recorder.pings("long outage") == 0, recorder.sent
    assert recorder.statuses() == [
        health_text(up=False, ever_up=False, healthy=True, grace=grace),
        "IMAP connected, waiting for mail",
        "IMAP unreachable: reconnecting",
        "no IMAP session for over 0.6s: unhealthy, watchdog pings withheld",
        "IMAP connected, waiting for mail",
    ]


def test_without_a_watchdog_only_the_status_is_sent() -> None:
    recorder = Recorder({})

    async def scenario() -> None:
        connected, stop = asyncio.Event(), asyncio.Event()
        connected.set()
        task = asyncio.create_task(keep_alive(recorder, connected, stop, grace=1, tick=0.01))
        await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(task, 1)

    asyncio.run(scenario())
    assert recorder.sent == [("start", "STATUS=IMAP connected, waiting for mail")]


def test_outside_systemd_keep_alive_just_waits_for_the_stop() -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(keep_alive(Notifier({}), asyncio.Event(), stop, grace=0))
        await asyncio.sleep(0.05)
        assert not task.done()
        stop.set()
        await asyncio.wait_for(task, 1)

    asyncio.run(scenario())


# --- the real daemon under a pretend systemd ----------------------------------------------------


@pytest.fixture
def notified_daemon(
    dovecot: Dovecot, smtp_sink: SmtpSink, tmp_path: Path, receiver: tuple[Receiver, str]
) -> Iterator[tuple[subprocess.Popen[bytes], Receiver]]:
    """`mailtick run` with NOTIFY_SOCKET and a 1 s WATCHDOG_USEC, as systemd starts it."""
    systemd, path = receiver
    config = write_config(
        tmp_path / "config.toml", settings(dovecot, smtp_sink, f"sqlite:///{tmp_path}/t.db")
    )
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
    proc = spawn_daemon(config, tmp_path / "daemon.log", env)
    try:
        yield proc, systemd
    finally:
        stop_process(proc)


def _count(messages: list[str], line: str) -> int:
    return sum(line in message.splitlines() for message in messages)


def test_the_daemon_notifies_ready_watchdog_status_and_stopping(
    notified_daemon: tuple[subprocess.Popen[bytes], Receiver], dovecot: Dovecot
) -> None:
    proc, systemd = notified_daemon
    systemd.wait_for(lambda got: _count(got, "READY=1") == 1, 30)
    assert systemd.messages[-1].startswith("READY=1\nSTATUS=started: support@example.com at ")
    systemd.wait_for(lambda got: _count(got, "STATUS=IMAP connected, waiting for mail") == 1, 20)
    start = len(systemd.messages)
    systemd.wait_for(lambda got: _count(got[start:], "WATCHDOG=1") >= 3, 5)  # every 0.5 s

    dovecot.stop(graceful=False)  # a short IMAP outage keeps the watchdog fed
    systemd.wait_for(lambda got: _count(got, "STATUS=IMAP unreachable: reconnecting") == 1, 15)
    start = len(systemd.messages)
    systemd.wait_for(lambda got: _count(got[start:], "WATCHDOG=1") >= 3, 5)

    proc.send_signal(signal.SIGTERM)
    systemd.wait_for(lambda got: _count(got, "STOPPING=1") == 1, 10)
    assert proc.wait(timeout=30) == 0
    assert _count(systemd.messages, "READY=1") == 1


def test_the_status_line_tells_the_sysadmin_about_quarantined_mail(
    dovecot: Dovecot,
    imap_client: ImapTestClient,
    smtp_sink: SmtpSink,
    tmp_path: Path,
    receiver: tuple[Receiver, str],
) -> None:
    """`systemctl status mailtick` shows that mail was set aside, and where to look."""
    systemd, path = receiver
    data = settings(
        dovecot, smtp_sink, f"sqlite:///{tmp_path}/t.db", tickets={"max_mail_bytes": 20_000}
    )
    config = write_config(tmp_path / "config.toml", data)
    proc = spawn_daemon(config, tmp_path / "daemon.log", {"NOTIFY_SOCKET": path})
    try:
        systemd.wait_for(
            lambda got: _count(got, "STATUS=IMAP connected, waiting for mail") >= 1, 30
        )
        imap_client.append(make_mail(subject="Scan", body="x" * 30_000))
        wanted = (
            "STATUS=IMAP connected, waiting for mail; "
            "1 mail(s) quarantined since start: mailtick quarantine list"
        )
        systemd.wait_for(lambda got: _count(got, wanted) == 1, 20)
    finally:
        stop_process(proc)
    assert imap_client.count("Quarantine") == 1


@pytest.mark.slow  # the shortest grace the config allows is 30 s
def test_a_database_that_stays_away_withholds_the_watchdog_until_it_is_back(
    dovecot: Dovecot,
    imap_client: ImapTestClient,
    smtp_sink: SmtpSink,
    tmp_path: Path,
    receiver: tuple[Receiver, str],
    postgres_url: str,
) -> None:
    """A daemon that cannot reach its database is unhealthy like one without its mailbox:
    after the grace (here 30 s) systemd hears no WATCHDOG=1 and would restart it."""
    systemd, path = receiver
    data = settings(dovecot, smtp_sink, postgres_url, imap={"idle_timeout": 10, "reconnect_max": 1})
    config = write_config(tmp_path / "config.toml", data)
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
    proc = spawn_daemon(config, tmp_path / "daemon.log", env)
    try:
        systemd.wait_for(
            lambda got: _count(got, "STATUS=IMAP connected, waiting for mail") >= 1, 30
        )
        terminate_backends(postgres_url, allow_connections=False)
        imap_client.append(make_mail(subject="While the database is away"))
        away = "database unavailable: reconnecting"  # (the watcher reconnects to IMAP too)
        systemd.wait_for(lambda got: any(away in m for m in got), 15)
        gone = "database unusable for over 30s: unhealthy, watchdog pings withheld"
        systemd.wait_for(lambda got: any(gone in m for m in got), 45)
        start = len(systemd.messages)
        time.sleep(1.5)  # three watchdog intervals
        assert _count(systemd.messages[start:], "WATCHDOG=1") == 0, systemd.messages[start:]

        terminate_backends(postgres_url, allow_connections=True)
        systemd.wait_for(lambda got: len(smtp_sink.messages) == 1, 30)
        start = len(systemd.messages)
        systemd.wait_for(lambda got: _count(got[start:], "WATCHDOG=1") >= 2, 10)
    finally:
        stop_process(proc)
    assert imap_client.count() == 0
