"""Test harness: a Config pointing at the test servers, the daemon in-process or as a process,
and the agent desk (agents, their reply-token secret, an agent's reply by mail)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servers import Dovecot, ReceivedMail, SmtpSink, make_mail, stop_process

from mailtick.app import Daemon, OnceResult
from mailtick.config import Config, parse_config

REPO = Path(__file__).resolve().parent.parent
SUPPORT = "support@example.com"

Section = dict[str, Any]  # one [section] of config.toml
Sections = Section | list[Section]  # or an array of tables: [[agents]]


def settings(dovecot: Dovecot, sink: SmtpSink, db_url: str, **sections: Sections) -> Section:
    """A config dict for the test servers; `sections` override keys per section."""
    data: dict[str, Any] = {
        "imap": {
            "host": dovecot.host,
            "port": dovecot.tls_port,
            "security": "tls",
            "username": SUPPORT,
            "password": "secret",
            "timeout": 10,
            "reconnect_min": 0.2,
            "reconnect_max": 2,
            "tls": {"ca_file": str(dovecot.cert_path)},
        },
        "smtp": {
            "host": sink.host,
            "port": sink.port,
            "security": "none",
            "from_address": f"Example Support <{SUPPORT}>",
            "timeout": 10,
            "retry_min": 0.2,
            "retry_max": 1,
        },
        "database": {"url": db_url},
        "quarantine": {"directory": str(dovecot.root / "mailtick-quarantine")},
    }
    for name, values in sections.items():
        if isinstance(values, list):  # an array of tables: [[agents]]
            data[name] = values
        else:
            data.setdefault(name, {}).update(values)
    return data


def make_config(dovecot: Dovecot, sink: SmtpSink, db_url: str, **sections: Sections) -> Config:
    return parse_config(settings(dovecot, sink, db_url, **sections), env={})


def run_once(config: Config) -> OnceResult:
    return asyncio.run(Daemon(config).run_once())


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Write a config dict as TOML (flat sections and one level of sub-tables)."""
    lines: list[str] = []
    for section, values in data.items():
        if isinstance(values, list):  # an array of tables
            for item in values:
                lines.append(f"[[{section}]]")
                lines += [f"{k} = {_toml(v)}" for k, v in item.items()]
            continue
        lines.append(f"[{section}]")
        tables = {k: v for k, v in values.items() if isinstance(v, dict)}
        lines += [f"{k} = {_toml(v)}" for k, v in values.items() if k not in tables]
        for name, table in tables.items():
            lines.append(f"[{section}.{name}]")
            lines += [f"{k} = {_toml(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def mailtick(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the console script as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "mailtick", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=os.environ if env is None else env,
    )


def spawn_daemon(
    config_path: Path, log_path: Path, env: dict[str, str] | None = None, **popen: Any
) -> subprocess.Popen[bytes]:
    """`mailtick run -c config` in the background, its output in `log_path`; not waited for.
    `env` adds variables to the environment; `popen` goes to subprocess.Popen."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "mailtick", "run", "-c", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            **popen,
        )


@contextmanager
def daemon_process(
    config_path: Path, log_path: Path, ready: bytes = b"IMAP connected"
) -> Iterator[subprocess.Popen[bytes]]:
    """`mailtick run -c config` in the background, yielded once its log shows `ready`
    (b"mailtick started" for a daemon that may never reach IMAP); SIGTERM and a bounded
    wait afterwards."""
    proc = spawn_daemon(config_path, log_path)
    try:
        wait_until(lambda: ready in log_path.read_bytes() or proc.poll() is not None, 20)
        assert proc.poll() is None, log_path.read_text()
        yield proc
    finally:
        stop_process(proc)


def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(step)


# -- the agent desk ---------------------------------------------------------------------------

DANA = "dana@example.com"
ELI = "eli@example.com"
DANA_AGENT: Section = {"name": "dana", "addresses": [DANA], "display_name": "Dana Example"}
ELI_AGENT: Section = {"name": "eli", "addresses": [ELI], "display_name": "Eli Sample"}
REPLY_SECRET = "5e" * 32  # the reply-token key `mailtick init` would write (hex, 32 bytes)


def _table(given: Sections | None) -> Section:
    """A [section] given to Desk.settings (never an array of tables), or an empty one."""
    assert not isinstance(given, list)
    return given or {}


@dataclass(frozen=True)
class Desk:
    """One test's Dovecot, SMTP sink and database, and the configuration for them.

    `desk.config()` is the support address alone; `desk.config(DANA_AGENT, ELI_AGENT)` adds
    agents, with what they need: the reply-token secret (a file in tmp_path), DMARC verdicts
    trusted from mx.example.com, and German as the default language (override it with
    tickets={"default_language": "en"}). Further sections are merged in key by key.
    """

    dovecot: Dovecot
    sink: SmtpSink
    db_url: str
    tmp_path: Path

    def settings(self, *agents: Section, **sections: Sections) -> Section:
        """The config dict: see the class; sections(tickets={...}) merge with the desk's."""
        merged: dict[str, Sections] = dict(sections)
        if agents:
            secret = self.tmp_path / "reply-secret"
            secret.write_text(REPLY_SECRET)
            merged["agents"] = list(agents)
            merged["security"] = {
                "secret_file": str(secret),
                "authserv_id": "mx.example.com",
                **_table(sections.get("security")),
            }
            merged["tickets"] = {"default_language": "de", **_table(sections.get("tickets"))}
        return settings(self.dovecot, self.sink, self.db_url, **merged)

    def config(self, *agents: Section, **sections: Sections) -> Config:
        return parse_config(self.settings(*agents, **sections), env={})

    def show(self, number: str, *options: str, data: Section | None = None) -> str:
        """What `mailtick show NUMBER OPTIONS` prints for a sysadmin, with the config `data`
        (default: `self.settings()`) written to tmp_path/show.toml; it must exit with 0."""
        path = write_config(self.tmp_path / "show.toml", self.settings() if data is None else data)
        shown = mailtick("show", number, *options, "-c", str(path))
        assert shown.returncode == 0, shown.stderr
        return shown.stdout


def agent_mail(
    notification: ReceivedMail,
    body: str,
    *,
    address: str = "",
    from_addr: str = f"Dana Example <{DANA}>",
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """Dana's reply to a notification as Thunderbird writes it: `body`, her signature, then the
    notification quoted; to its Reply-To unless `address` is given."""
    quoted = "\n".join("> " + line for line in notification.message.get_content().splitlines())
    target = address or notification.message["Reply-To"].addresses[0].addr_spec
    return make_mail(
        from_addr=from_addr,
        to_addr=target,
        subject="Re: " + str(notification.message["Subject"]),
        body=(
            f"{body}\n\n-- \nDana Example\nExample Support\n\n"
            f"Am 23.11.2026 um 09:12 schrieb Support:\n{quoted}\n"
        ),
        in_reply_to=notification.message["Message-ID"],
        headers=headers,
    )


def note_address(notification: ReceivedMail) -> str:
    """The address for internal notes that a notification names (support+n-...)."""
    content: str = notification.message.get_content()
    for line in content.splitlines():
        if "+n-" in line:
            return line.split()[-1]
    raise AssertionError("no note address in the notification")
