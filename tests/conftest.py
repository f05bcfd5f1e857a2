"""Pytest fixtures: real Dovecot, SMTP sink and SQLite/PostgreSQL databases (see tests/servers.py),
the database opened for assertions, and the desk: a configuration for them (tests/harness.py).

Every server is started per test and stopped in teardown, also when the test fails. The Dovecot
log of each test is copied to the test's tmp_path (pytest keeps the last runs' tmp dirs) so a
failure can be read afterwards.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import peewee as pw
import pytest

# tests/servers.py: pytest puts tests/ on sys.path (tests/ has no __init__.py).
from harness import Desk
from servers import Dovecot, ImapTestClient, PostgresUnreachable, SmtpSink, postgres_database

from mailtick.db import open_database


@pytest.fixture
def dovecot_factory(tmp_path: Path) -> Iterator[Callable[..., Dovecot]]:
    """Start extra Dovecots with options, e.g. `dovecot_factory(idle=False, move=False)`.
    All of them are stopped after the test. Keyword arguments go to Dovecot()."""
    servers: list[Dovecot] = []

    def start(**options: Any) -> Dovecot:
        server = Dovecot(**options)
        servers.append(server)
        server.start()
        return server

    yield start
    for number, server in enumerate(servers):
        with contextlib.suppress(FileNotFoundError):
            shutil.copy(server.log_path, tmp_path / f"dovecot-{number}.log")
        server.close()


@pytest.fixture
def dovecot(dovecot_factory: Callable[..., Dovecot]) -> Dovecot:
    """A running Dovecot with the default user support@example.com / secret and an empty INBOX.
    Starting one takes ~0.05 s and killing it ~0.01 s, so every test gets its own."""
    return dovecot_factory()


@pytest.fixture
def imap_client(dovecot: Dovecot) -> Iterator[ImapTestClient]:
    """ImapTestClient logged in as the default user on the `dovecot` fixture."""
    with dovecot.client() as client:
        yield client


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A plain SMTP server on 127.0.0.1 that accepts and records every mail."""
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a not yet existing SQLite file in the test's tmp dir."""
    return f"sqlite:///{tmp_path}/mailtick.db"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database, dropped after the test.
    Fails (never skips) when PostgreSQL is unreachable: CI has it, so that is a broken setup."""
    with _fresh_postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Runs the test twice: on a SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/mailtick.db"
    else:
        with _fresh_postgres_database() as url:
            yield url


@pytest.fixture
def db(db_url: str) -> Iterator[pw.Database]:
    """The test database, opened (its schema created) before the test runs the daemon, for the
    test's own queries: mailtick's models are bound to it (the daemon opens its own)."""
    database = open_database(db_url)
    yield database
    database.close()


@pytest.fixture
def desk(dovecot: Dovecot, smtp_sink: SmtpSink, db_url: str, tmp_path: Path) -> Desk:
    """Configurations for this test's servers and database: `desk.config()`, or with agents
    `desk.config(DANA_AGENT, drift={"action": "off"})` (tests/harness.py)."""
    return Desk(dovecot, smtp_sink, db_url, tmp_path)


@contextlib.contextmanager
def _fresh_postgres_database() -> Iterator[str]:
    """servers.postgres_database, failing (never skipping) when PostgreSQL is not there."""
    try:
        with postgres_database() as url:
            yield url
    except PostgresUnreachable as error:
        pytest.fail(str(error), pytrace=False)
