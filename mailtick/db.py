"""Storage layer: peewee models, opening SQLite/PostgreSQL, schema upgrades. Touches the database.

The rule for database access: `open_database` binds the models to the one database
of the process, and every query goes through the bound models or the helpers at the
end of this module (`execute`, `insert_row`, `get_row`), which find that database
themselves; no query function takes a `Database`. A `Database` object is handled
only where a connection or a transaction is managed: here (`open_database`,
`migrate`, `write_transaction`), the Store's lanes (store.py), and the functions
that open a transaction or a savepoint. The daemon runs queries on the Store's
threads; the CLI calls them directly. All times are naive UTC datetimes.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import peewee as pw
from playhouse.migrate import SchemaMigrator
from playhouse.migrate import migrate as migrate_steps

from mailtick.outcomes import Transient

# Ticket statuses, in the words of seed 000.
STATUSES = ("open", "in-progress", "waiting", "information", "answered", "closed")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class BaseModel(pw.Model):
    pass


class Row(BaseModel):
    """A table with an integer primary key `id`."""

    id = pw.AutoField()


class SchemaVersion(Row):
    version = pw.IntegerField()


class Counter(BaseModel):
    """Named sequences; "ticket" hands out ticket numbers under a row lock."""

    name = pw.CharField(primary_key=True, max_length=40)
    value = pw.BigIntegerField()


class MailboxCursor(Row):
    """Per mailbox of an account: the UIDVALIDITY we know and the highest UID fully handled.
    Since schema 3 keyed by the account too (table `imapcursor`; `mailboxcursor` before)."""

    account = pw.CharField(max_length=255)  # "user@host", see imap.account_of
    mailbox = pw.CharField(max_length=255)
    uidvalidity = pw.BigIntegerField()
    last_uid = pw.BigIntegerField(default=0)

    class Meta:
        table_name = "imapcursor"
        indexes = ((("account", "mailbox"), True),)


class Ticket(Row):
    number = pw.CharField(unique=True, max_length=20)
    subject = pw.TextField()
    status = pw.CharField(max_length=20, default="open", index=True)
    requester = pw.CharField(max_length=320, index=True)
    requester_name = pw.TextField(default="")
    language = pw.CharField(max_length=8, default="en")
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)
    closed_at = pw.DateTimeField(null=True)
    linked_to = pw.ForeignKeyField("self", null=True, backref="links", on_delete="SET NULL")
    linked_to_id: int | None
    queue = pw.CharField(max_length=40, default="default")
    owner = pw.CharField(max_length=40, null=True)  # the agent who answered last (seed 000)
    priority = pw.CharField(max_length=10, default="normal")  # urgent | high | normal | low
    merged_into = pw.ForeignKeyField("self", null=True, on_delete="SET NULL")
    merged_into_id: int | None


class Message(Row):
    """Every mail of a ticket, incoming and outgoing, with its raw bytes."""

    ticket = pw.ForeignKeyField(Ticket, backref="messages", on_delete="CASCADE")
    ticket_id: int
    message_id = pw.CharField(unique=True, max_length=255)
    direction = pw.CharField(max_length=3)  # "in" | "out"
    # in: customer | automatic | agent | note | agent-error
    # out: ack | notification | relay | note | command-error | stranger | split | drift-warning
    kind = pw.CharField(max_length=20, default="customer")
    author_addr = pw.CharField(max_length=320)
    author_name = pw.TextField(default="")
    subject = pw.TextField(default="")
    text = pw.TextField(default="")
    data = pw.BlobField()  # the mail exactly as received or sent
    thread_rule = pw.CharField(max_length=40, default="")
    thread_detail = pw.TextField(default="")
    flag = pw.TextField(default="")  # why this mail is suspicious (a forged agent From, ...)
    drift = pw.TextField(default="")  # JSON: the topic-drift decision {score, reasons, action}
    mailbox = pw.CharField(max_length=255, null=True)
    uidvalidity = pw.BigIntegerField(null=True)
    uid = pw.BigIntegerField(null=True)
    created_at = pw.DateTimeField(default=utcnow)
    account = pw.CharField(max_length=255, null=True)  # since schema 3: "user@host"

    class Meta:
        indexes = ((("account", "mailbox", "uidvalidity", "uid"), False),)


class Participant(Row):
    """Who may write into a ticket: the requester and the customers they copied in."""

    ticket = pw.ForeignKeyField(Ticket, backref="participants", on_delete="CASCADE")
    address = pw.CharField(max_length=320)
    role = pw.CharField(max_length=20)  # requester | cc

    class Meta:
        indexes = ((("ticket", "address"), True),)


class Wish(Row):
    """A feature wish: every "that isn't possible" an agent records with #wish (seed 003)."""

    name = pw.CharField(max_length=200, unique=True)
    count = pw.IntegerField(default=0)
    status = pw.CharField(max_length=20, default="open")
    first_at = pw.DateTimeField(default=utcnow)
    last_at = pw.DateTimeField(default=utcnow)


class Attachment(Row):
    message = pw.ForeignKeyField(Message, backref="attachments", on_delete="CASCADE")
    filename = pw.TextField()
    content_type = pw.CharField(max_length=255)
    size = pw.IntegerField()
    data = pw.BlobField()


class Outbox(Row):
    """A mail to send; written in the transaction that decided to send it."""

    message = pw.ForeignKeyField(Message, backref="outbox", on_delete="CASCADE")
    message_id: int
    mail_from = pw.CharField(max_length=320)
    rcpt_to = pw.TextField()  # comma-separated addr-specs
    # pending | sent | failed | held (a send cap or a bouncing address stopped it) | bounced
    status = pw.CharField(max_length=10, default="pending", index=True)
    attempts = pw.IntegerField(default=0)
    next_attempt_at = pw.DateTimeField(default=utcnow, index=True)
    claimed_until = pw.DateTimeField(null=True)  # a sender's lease; guards several instances
    claim_token = pw.CharField(max_length=32, null=True, index=True)  # whose lease
    last_error = pw.TextField(default="")
    created_at = pw.DateTimeField(default=utcnow)
    sent_at = pw.DateTimeField(null=True)
    # since schema 2: what the send caps count (see caps.py)
    kind = pw.CharField(max_length=20, default="")  # the message's kind: ack, relay, ...
    subject_key = pw.TextField(default="")  # the subject without tags and Re:/AW: prefixes

    class Meta:
        indexes = ((("rcpt_to", "created_at"), False),)


class Event(Row):
    """What happened to a ticket besides mail: created, reopened, linked, status changes."""

    ticket = pw.ForeignKeyField(Ticket, backref="events", on_delete="CASCADE")
    at = pw.DateTimeField(default=utcnow)
    kind = pw.CharField(max_length=30)
    detail = pw.TextField(default="")


class Quarantine(Row):
    """A mail that could not be processed, with the reason and its bytes."""

    mailbox = pw.CharField(max_length=255)
    uidvalidity = pw.BigIntegerField()
    uid = pw.BigIntegerField()
    message_id = pw.CharField(max_length=255, default="")
    reason = pw.TextField()
    data = pw.BlobField()  # schema 1 kept the bytes here; since schema 2 they are in `path`
    at = pw.DateTimeField(default=utcnow)
    # since schema 2
    path = pw.TextField(default="")  # the raw bytes' file under quarantine.directory
    size = pw.BigIntegerField(default=0)  # the mail's size on the server (RFC822.SIZE)
    account = pw.CharField(max_length=255, default="")  # since schema 3: "user@host"


class Attempt(Row):
    """A mail whose processing began and has not ended (poison cap): counted before each
    try and deleted with its outcome, so a mail that crashes the daemon again and again is
    quarantined after `quarantine.max_attempts` tries instead of looping forever."""

    mailbox = pw.CharField(max_length=255)
    uidvalidity = pw.BigIntegerField()
    uid = pw.BigIntegerField()
    count = pw.IntegerField(default=0)
    last_error = pw.TextField(default="")
    first_at = pw.DateTimeField(default=utcnow)
    last_at = pw.DateTimeField(default=utcnow)
    account = pw.CharField(max_length=255, default="")  # since schema 3: "user@host"

    class Meta:
        indexes = ((("account", "mailbox", "uidvalidity", "uid"), True),)


class Address(BaseModel):
    """What we know about a correspondent's address: whether our mail to it bounces."""

    address = pw.CharField(primary_key=True, max_length=320)
    bouncing = pw.BooleanField(default=False)
    bounces = pw.IntegerField(default=0)
    last_bounce_at = pw.DateTimeField(null=True)
    last_bounce = pw.TextField(default="")  # the DSN's Status and Diagnostic-Code


MODELS: tuple[type[BaseModel], ...] = (
    SchemaVersion,
    Counter,
    MailboxCursor,
    Ticket,
    Message,
    Participant,
    Wish,
    Attachment,
    Outbox,
    Event,
    Quarantine,
    Attempt,
    Address,
)


def _v2(db: pw.Database) -> None:
    """Send caps, bounces, the poison cap and quarantine files."""
    migrator = SchemaMigrator.from_database(db)
    migrate_steps(
        migrator.add_column("outbox", "kind", pw.CharField(max_length=20, default="")),
        migrator.add_column("outbox", "subject_key", pw.TextField(default="")),
        migrator.add_index("outbox", ("rcpt_to", "created_at"), False),
        migrator.add_column("quarantine", "path", pw.TextField(default="")),
        migrator.add_column("quarantine", "size", pw.BigIntegerField(default=0)),
    )
    db.create_tables((Attempt, Address))


def _v3(db: pw.Database) -> None:
    """The mailbox identity: account (user@host) + mailbox + UIDVALIDITY, in the cursor
    and every dedupe key. Rows from before have the account "" (unknown): the first
    account to start with the mailbox's name adopts its cursor (see watch.load_cursor).
    `attempt` may have the new shape already: _v2 creates it from today's model."""
    migrator = SchemaMigrator.from_database(db)
    key = ("account", "mailbox", "uidvalidity", "uid")
    steps = [
        *_new_column(db, migrator, "message", pw.CharField(max_length=255, null=True)),
        *_new_column(db, migrator, "attempt", pw.CharField(max_length=255, default="")),
        *_new_column(db, migrator, "quarantine", pw.CharField(max_length=255, default="")),
        *_new_index(db, migrator, "message", "mailbox_uidvalidity_uid", key, unique=False),
        *_new_index(db, migrator, "attempt", "mailbox_uidvalidity_uid", key, unique=True),
    ]
    migrate_steps(*steps)
    db.create_tables((MailboxCursor,))
    db.execute_sql(  # type: ignore[no-untyped-call]
        "INSERT INTO imapcursor (account, mailbox, uidvalidity, last_uid)"
        " SELECT '', mailbox, uidvalidity, last_uid FROM mailboxcursor"
    )
    db.execute_sql("DROP TABLE mailboxcursor")  # type: ignore[no-untyped-call]


def _new_column(
    db: pw.Database, migrator: SchemaMigrator, table: str, field: pw.Field, name: str = "account"
) -> list[Any]:
    """The step adding `table.name`, unless the table has that column already."""
    if any(column.name == name for column in db.get_columns(table)):
        return []
    return [migrator.add_column(table, name, field)]


def _new_index(
    db: pw.Database,
    migrator: SchemaMigrator,
    table: str,
    old: str,
    columns: tuple[str, ...],
    unique: bool,
) -> list[Any]:
    """The steps replacing the index `table_old` by one on `columns` (peewee's names)."""
    names = {index.name for index in db.get_indexes(table)}
    steps = [migrator.drop_index(table, f"{table}_{old}")] if f"{table}_{old}" in names else []
    if f"{table}_{'_'.join(columns)}" not in names:
        steps.append(migrator.add_index(table, columns, unique))
    return steps


# Schema upgrades of an existing database: (version reached, step). Append, never edit
# a released step. A new database gets every table as the models define them now, and
# the last version.
MIGRATIONS: tuple[tuple[int, Callable[[pw.Database], None]], ...] = ((2, _v2), (3, _v3))
LATEST = MIGRATIONS[-1][0]


def open_database(url: str) -> pw.Database:
    """Open the database named by `url`, bind the models and bring the schema up to date.

    The models are bound to the returned Database for the whole process: open one
    database per process (the daemon's Store does), not a second one beside it."""
    db = _connect(url)
    db.bind(MODELS)
    db.connect(reuse_if_open=True)
    migrate(db)
    return db


def _connect(url: str) -> pw.Database:
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = unquote(url[len("sqlite:///") :]) or ":memory:"
        return pw.SqliteDatabase(
            path,
            returning_clause=True,  # SQLite >= 3.35: UPDATE ... RETURNING draws ticket numbers
            pragmas={
                "journal_mode": "wal",
                "synchronous": "full",
                "foreign_keys": 1,
                "busy_timeout": 15000,
            },
        )
    if parts.scheme in ("postgresql", "postgres"):
        return pw.PostgresqlDatabase(
            unquote(parts.path.lstrip("/")),
            user=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            host=parts.hostname,
            port=parts.port,
            connect_timeout=10,
            # a peer that vanished (host down, network cut) is noticed in about 11 s,
            # not after the kernel's 2 hours: leader.py relies on it
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
        )
    raise ValueError(f"unsupported database url scheme {parts.scheme!r}")


def migrate(db: pw.Database) -> int:
    """Create or upgrade the schema; safe when several processes start at once."""
    with write_transaction(db):
        if isinstance(db, pw.PostgresqlDatabase):
            # one migrator at a time
            db.execute_sql("SELECT pg_advisory_xact_lock(7263541)")  # type: ignore[no-untyped-call]
        if not db.table_exists("schemaversion"):
            db.create_tables(MODELS)
            Counter.create(name="ticket", value=0)
            SchemaVersion.create(version=LATEST)
            return LATEST
        row = SchemaVersion.select(pw.fn.MAX(SchemaVersion.version)).scalar()
        current = int(row or 0)
        for version, step in MIGRATIONS:
            if version > current:
                step(db)
                SchemaVersion.create(version=version)
                current = version
    return current


@contextlib.contextmanager
def write_transaction(db: pw.Database) -> Iterator[None]:
    """A transaction that takes the write lock at once (SQLite: BEGIN IMMEDIATE), so two
    processes never deadlock upgrading a read lock; PostgreSQL's row locks do the rest."""
    if isinstance(db, pw.SqliteDatabase):
        with db.atomic("IMMEDIATE"):
            yield
    else:
        with db.atomic():
            yield


def message_id_stored(message_id: str) -> bool:
    """A constraint error while recording is a duplicate only when this is true: the
    Message-ID is found stored (another instance recorded the mail first)."""
    return bool(Message.select().where(Message.message_id == message_id).exists())


# SQLite says OperationalError both for an outage (locked, disk full, unreadable file) and
# for a statement that cannot run ("too many SQL variables"): only the first is the
# database's fault; the second is the one mail's (a failed try, handled alone).
_SQLITE_OUTAGES = ("locked", "busy", "disk", "unable to open", "readonly", "no such table")


def is_connection_error(exc: BaseException) -> bool:
    """The database is away or unusable right now (not: this statement cannot run)."""
    if isinstance(exc, pw.InterfaceError):
        return True
    if not isinstance(exc, pw.OperationalError):
        return False
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, sqlite3.Error):
        text = str(exc).lower()
        return any(word in text for word in _SQLITE_OUTAGES)
    return True


def guard(db: pw.Database, exc: BaseException) -> Transient:
    """Turn a lost database connection into Transient and drop the broken connection."""
    with contextlib.suppress(Exception):
        db.close()
    return Transient(f"database unavailable: {type(exc).__name__}: {exc}".strip())


def check_durability(db: pw.Database) -> None:
    """Refuse to run on a SQLite database that is not in WAL mode with synchronous=FULL."""
    if not isinstance(db, pw.SqliteDatabase):
        return
    mode = str(db.pragma("journal_mode")).lower()
    sync = int(db.pragma("synchronous"))
    if mode != "wal" and db.database != ":memory:":
        raise RuntimeError(f"SQLite journal_mode is {mode!r}, expected 'wal'")
    if sync != 2:
        raise RuntimeError(f"SQLite synchronous is {sync}, expected 2 (FULL)")


# -- the hot path -------------------------------------------------------------------------
# peewee spends about 280 µs building each INSERT or UPDATE; the same statement as plain
# SQL costs 16 µs (measured here, SQLite). Ingest runs about five statements per mail, so
# the few it repeats are written once from the models' own metadata and run as plain SQL.
# Table and column names come from our models, never from input; values are parameters.


def bound() -> pw.Database:
    """The database the models are bound to (see open_database)."""
    return Ticket._meta.database  # type: ignore[no-any-return]


def _is_postgres(db: pw.Database) -> bool:
    return isinstance(db, pw.PostgresqlDatabase)


@functools.lru_cache(maxsize=64)
def _insert_sql(model: type[BaseModel], names: tuple[str, ...], param: str, pg: bool) -> str:
    meta = model._meta
    columns = ", ".join(f'"{meta.fields[name].column_name}"' for name in names)
    values = ", ".join([param] * len(names))
    key = meta.primary_key
    returning = f' RETURNING "{key.column_name}"' if pg and key else ""
    return f'INSERT INTO "{meta.table_name}" ({columns}) VALUES ({values}){returning}'


def insert_row(model: type[BaseModel], **values: Any) -> int:
    """INSERT one row (field name -> Python value) and return its new id. Fields left out
    get their model default, as Model.create would give them."""
    db = bound()
    fields = model._meta.fields
    for name, field in fields.items():
        if name not in values and field.default is not None:
            values[name] = field.default() if callable(field.default) else field.default
    sql = _insert_sql(model, tuple(values), db.param, _is_postgres(db))
    params = [fields[name].db_value(value) for name, value in values.items()]
    cursor = db.execute_sql(sql, params)  # type: ignore[no-untyped-call]
    return int(cursor.fetchone()[0] if _is_postgres(db) else cursor.lastrowid)


@functools.lru_cache(maxsize=16)
def _select_sql(model: type[BaseModel], param: str) -> tuple[str, tuple[pw.Field, ...]]:
    meta = model._meta
    fields = tuple(meta.sorted_fields)
    columns = ", ".join(f'"{field.column_name}"' for field in fields)
    return f'SELECT {columns} FROM "{meta.table_name}" WHERE "id" = {param}', fields


def get_row(model: type[Row], row_id: int) -> Any:
    """Model.get_by_id as plain SQL: the model instance, or None."""
    db = bound()
    sql, fields = _select_sql(model, db.param)
    found = db.execute_sql(sql, (row_id,)).fetchone()  # type: ignore[no-untyped-call]
    if found is None:
        return None
    values = {
        field.name: field.python_value(value)  # type: ignore[no-untyped-call]
        for field, value in zip(fields, found, strict=True)
    }
    return model(**values)


def execute(sql: str, *params: Any) -> Any:
    """Run a statement written with `{p}` for each placeholder; returns the cursor."""
    db = bound()
    return db.execute_sql(sql.format(p=db.param), params)  # type: ignore[no-untyped-call]
