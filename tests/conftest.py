"""Pytest fixtures: real Dovecot, SMTP sink and SQLite/PostgreSQL databases (see tests/servers.py).

Every server is started per test and stopped in teardown, also when the test fails. The Dovecot
log of each test is copied to the test's tmp_path (pytest keeps the last runs' tmp dirs) so a
failure can be read afterwards.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql

# tests/servers.py: pytest puts tests/ on sys.path (tests/ has no __init__.py).
from servers import Dovecot, ImapTestClient, SmtpSink

# The PostgreSQL that the dev machines and CI provide (trust auth). Each test that asks for it
# gets its own database, created here and dropped afterwards.
PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
PG_ADMIN_DATABASE = "test"


def pytest_configure(config: pytest.Config) -> None:
    # aiosmtpd warns when AUTH is allowed without STARTTLS; SmtpSink(auth=...) does that on
    # purpose (implicit TLS, or plain SMTP on 127.0.0.1).
    config.addinivalue_line(
        "filterwarnings", "ignore:Requiring AUTH while not requiring TLS:UserWarning"
    )


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


@contextlib.contextmanager
def _fresh_postgres_database() -> Iterator[str]:
    name = f"mt_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg2.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=PG_ADMIN_DATABASE, connect_timeout=5
        )
    except psycopg2.OperationalError as error:
        pytest.fail(
            f"PostgreSQL at {PG_USER}@{PG_HOST}:{PG_PORT}/{PG_ADMIN_DATABASE} is unreachable "
            f"({error}). The tests need it; start it (see .ci/run).",
            pytrace=False,
        )
    admin.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    try:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with admin.cursor() as cur:
            # Connections the code under test forgot to close would block DROP DATABASE.
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        admin.close()
