"""Test harness: a Config pointing at the test servers, the daemon in-process or as a process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from servers import Dovecot, SmtpSink, stop_process

from mailtick.app import Daemon, OnceResult
from mailtick.config import Config, parse_config

REPO = Path(__file__).resolve().parent.parent
SUPPORT = "support@example.com"


def settings(
    dovecot: Dovecot, sink: SmtpSink, db_url: str, **sections: dict[str, Any]
) -> dict[str, Any]:
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


def make_config(
    dovecot: Dovecot, sink: SmtpSink, db_url: str, **sections: dict[str, Any]
) -> Config:
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
