"""Configuration: config.toml -> validated, typed Config. Touches the file system and env only.

The accepted keys live in one table, SCHEMA (section -> key -> Key(check, default)). The reader
walks it, so validation, defaults and the documentation test all come from the same place.
Every problem is collected, one line per bad key, before anything is built.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email import errors as email_errors
from email import policy as email_policy
from enum import Enum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import SplitResult, urlsplit

Security = Literal["tls", "starttls", "none"]


class ConfigError(Exception):
    """A config file that cannot be used. `problems` holds one line per bad key:
    "imap.port: expected an integer, got \"abc\""."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class TlsSettings:
    verify: bool = True  # verify the server certificate and host name
    ca_file: Path | None = None  # extra CA bundle (a self-signed server in a lab)


@dataclass(frozen=True)
class ImapConfig:
    host: str
    port: int
    security: Security
    username: str
    password: str = field(default="", repr=False)  # from password / password_file / password_env
    mailbox: str = "INBOX"
    processed_mailbox: str = "Processed"
    quarantine_mailbox: str = "Quarantine"
    batch_size: int = 50  # UIDs per FETCH and per MOVE: keeps every server answer bounded
    parse_workers: int = 1  # processes parsing batches beside the database thread; 0: none
    parse_timeout: float = 60.0  # seconds a worker may parse one batch before it counts as failed
    idle: bool = True  # use IDLE when the server offers it
    idle_timeout: float = 300.0  # seconds before IDLE is renewed (RFC 2177: under 29 min)
    poll_interval: float = 30.0  # seconds between polls when IDLE is off or unavailable
    timeout: float = 60.0  # seconds for any single IMAP command
    reconnect_min: float = 1.0  # first reconnect delay, doubled up to reconnect_max
    reconnect_max: float = 300.0
    tls: TlsSettings = TlsSettings()


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    security: Security
    from_address: str  # "Example Support <support@example.com>"
    username: str = ""  # empty: no AUTH
    password: str = field(default="", repr=False)
    timeout: float = 60.0
    retry_min: float = 30.0  # first retry delay after a 4xx or connection error
    retry_max: float = 3600.0
    max_attempts: int = 20  # after this many transient failures the mail is marked failed
    tls: TlsSettings = TlsSettings()


@dataclass(frozen=True)
class DatabaseConfig:
    url: str  # sqlite:////abs/path.db | sqlite:///:memory: | postgresql://user@host:port/db

    def __repr__(self) -> str:
        return f"DatabaseConfig(url={mask_url(self.url)!r})"


@dataclass(frozen=True)
class TicketsConfig:
    prefix: str = "MT"  # subject tag [MT#10017]
    reopen_days: int = 30  # a reply within this many days of closing reopens the ticket
    default_language: Literal["de", "en"] = "en"
    max_mail_bytes: int = 25 * 1024 * 1024  # larger mail is quarantined, never made a ticket


@dataclass(frozen=True)
class QuarantineConfig:
    directory: Path = Path("/var/lib/mailtick/quarantine")  # raw bytes, one file per mail
    max_attempts: int = 3  # poison cap: a mail whose processing failed this often is set aside


@dataclass(frozen=True)
class LimitsConfig:
    """Send caps: they bound what two robots (an autoresponder and us) can send each other."""

    acks_per_subject: int = 1  # acknowledgements per sender and day for the same subject
    ticket_burst: int = 10  # mails per ticket and recipient within 10 minutes
    daily_per_address: int = 50  # mails per customer address and day


@dataclass(frozen=True)
class DriftConfig:
    action: Literal["warn", "split", "off"] = "warn"  # what a reply on a new topic causes
    threshold: float = 0.6  # score from which a reply counts as a new topic


@dataclass(frozen=True)
class AgentConfig:
    name: str  # short handle for commands and logs: "dana"
    addresses: tuple[str, ...]  # the agent's own addresses, lower-cased addr-specs
    display_name: str = ""  # "Dana Example" -> From "Dana Example via Example Support"
    queues: tuple[str, ...] = ("default",)


@dataclass(frozen=True)
class SecurityConfig:
    secret_file: Path | None = None  # signing key for reply tokens (created by `mailtick init`)
    secret_env: str | None = None
    token_days: int = 90  # a reply token older than this is refused
    authserv_id: str = ""  # trust Authentication-Results from this server only ("": none)
    secret: bytes = field(default=b"", repr=False)  # read from secret_file/secret_env


@dataclass(frozen=True)
class Config:
    imap: ImapConfig
    smtp: SmtpConfig
    database: DatabaseConfig
    tickets: TicketsConfig = TicketsConfig()
    agents: tuple[AgentConfig, ...] = ()
    security: SecurityConfig = SecurityConfig()
    drift: DriftConfig = DriftConfig()
    quarantine: QuarantineConfig = QuarantineConfig()
    limits: LimitsConfig = LimitsConfig()
    log_level: str = "INFO"
    source: Path | None = None  # the file it came from


# --- the schema table -------------------------------------------------------------------------


class _Marker(Enum):
    REQUIRED = "required"


REQUIRED = _Marker.REQUIRED  # Key default for a key that must be given


@dataclass
class _Context:
    base_dir: Path  # relative paths are relative to this (the config file's directory)
    env: Mapping[str, str]
    source: Path | None = None
    problems: list[str] = field(default_factory=list)

    def report(self, where: str, problem: str) -> None:
        self.problems.append(f"{where}: {problem}")


class _Invalid(Exception):
    """A check's verdict on one value; the reader prefixes the dotted key path."""


Check = Callable[[object, _Context], object]
Values = dict[str, Any]
Finish = Callable[[Values, Mapping[str, object], str, _Context], None]


@dataclass(frozen=True)
class Key:
    check: Check  # returns the converted value or raises _Invalid
    default: object  # REQUIRED, or the value used when the key is absent


@dataclass(frozen=True)
class Many:
    """An array of tables such as [[agents]], each read with `section`."""

    section: Section


@dataclass(frozen=True)
class Section:
    keys: Mapping[str, Key | Section | Many]
    required: bool = False
    make: Callable[..., Any] | None = None  # builds the result; None: a plain dict
    finish: Finish | None = None  # cross-key checks and derived values, after the keys


# --- how values are shown in problems ---------------------------------------------------------


def _kind(value: object) -> str:
    kinds: list[tuple[type | tuple[type, ...], str]] = [
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (Mapping, "a table"),
        (list, "an array"),
    ]
    for types, name in kinds:
        if isinstance(value, types):
            return name
    return f"a {type(value).__name__}"  # TOML dates and times


def _num(value: float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _show(value: object) -> str:
    """Strings quoted, numbers bare, anything else named."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _num(value)
    return _kind(value)


def _expected(what: str, value: object) -> _Invalid:
    return _Invalid(f"expected {what}, got {_show(value)}")


# --- checks: one value each -------------------------------------------------------------------


def boolean(value: object, ctx: _Context) -> bool:
    if not isinstance(value, bool):
        raise _expected("a boolean", value)
    return value


def _range_text(lo: float, hi: float | None, above: bool) -> str:
    if hi is not None:
        return f"{_num(lo)}..{_num(hi)}"
    return f"{'>' if above else '>='} {_num(lo)}"


def _within(value: float, lo: float, hi: float | None, above: bool = False) -> None:
    too_low = value <= lo if above else value < lo
    if too_low or (hi is not None and value > hi):
        raise _expected(_range_text(lo, hi, above), value)


def integer(lo: int, hi: int | None = None) -> Check:
    def check(value: object, ctx: _Context) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _expected("an integer", value)
        _within(value, lo, hi)
        return value

    return check


def number(lo: float, hi: float | None = None, *, above: bool = False) -> Check:
    """A float; integers are accepted. `above`: lo itself is excluded."""

    def check(value: object, ctx: _Context) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _expected("a number", value)
        if not math.isfinite(value):
            raise _expected("a finite number", value)
        _within(value, lo, hi, above)
        return float(value)

    return check


def _has_break(text: str) -> bool:
    return any(c in text for c in "\r\n\0")


def _line(value: object, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise _expected("a string", value)
    if not value and not empty_ok:
        raise _expected("a non-empty string", value)
    if _has_break(value):
        raise _expected("a single-line string", value)
    return value


def text(*, empty_ok: bool = False) -> Check:
    def check(value: object, ctx: _Context) -> str:
        return _line(value, empty_ok)

    return check


def choice(*options: str, fold_case: bool = False) -> Check:
    def check(value: object, ctx: _Context) -> str:
        folded = value.upper() if fold_case and isinstance(value, str) else value
        if not isinstance(folded, str) or folded not in options:
            listed = ", ".join(json.dumps(option) for option in options)
            raise _expected(f"one of {listed}", value)
        return folded

    return check


_HOST_NAME = re.compile(r"[\w.-]+")


def host(value: object, ctx: _Context) -> str:
    name = _line(value)
    if _HOST_NAME.fullmatch(name) is None and not _is_ip(name):
        raise _expected("a host name or IP address", value)
    return name


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _is_loopback(name: str) -> bool:
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _absolute(raw: str, ctx: _Context) -> Path:
    return Path(os.path.abspath(ctx.base_dir / Path(raw).expanduser()))


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def readable_file(value: object, ctx: _Context) -> Path:
    path = _absolute(_line(value), ctx)
    try:
        path.open("rb").close()
    except OSError as exc:
        raise _Invalid(f"cannot read {path}: {_reason(exc)}") from None
    return path


def secret(value: object, ctx: _Context) -> str:
    """An inline password: never echoed in a problem."""
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_kind(value)}")
    if not value:
        raise _expected("a non-empty string", value)
    if _has_break(value):
        raise _Invalid("expected a single-line string, got a string with a line break")
    return value


def secret_file(value: object, ctx: _Context) -> str:
    path = _absolute(_line(value), ctx)
    try:
        content = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise _Invalid(f"cannot read {path}: {_reason(exc)}") from None
    except UnicodeDecodeError:
        raise _Invalid(f"cannot read {path}: not valid UTF-8") from None
    password = content.rstrip("\r\n")
    if not password:
        raise _Invalid(f"{path} is empty")
    if _has_break(password):
        raise _Invalid(f"{path} holds more than one line")
    return password


def secret_env(value: object, ctx: _Context) -> str:
    name = _line(value)
    password = ctx.env.get(name)
    if password is None:
        raise _Invalid(f"environment variable {name} is not set")
    if not password:
        raise _Invalid(f"environment variable {name} is empty")
    if _has_break(password):
        raise _Invalid(f"environment variable {name} holds a line break")
    return password


def mail_address(value: object, ctx: _Context) -> str:
    raw = _line(value).strip()
    try:
        header = email_policy.default.header_factory("From", raw)
        addresses = header.addresses
    except (email_errors.HeaderParseError, ValueError, IndexError):
        addresses = ()
    else:
        if header.defects:
            addresses = ()
    if len(addresses) != 1 or not addresses[0].username or not addresses[0].domain:
        raise _expected('one address such as "Support <support@example.com>"', value)
    return raw


_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9]{0,9}")


def ticket_prefix(value: object, ctx: _Context) -> str:
    prefix = _line(value)
    if _PREFIX.fullmatch(prefix) is None:
        raise _expected("1 to 10 letters and digits, starting with a letter", value)
    return prefix


# --- agents and reply-token secrets ----------------------------------------------------------

_AGENT_NAME = re.compile(r"[a-z][a-z0-9._-]{0,31}")
_ADDR_SPEC = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


def path(value: object, ctx: _Context) -> Path:
    return _absolute(_line(value), ctx)


def agent_name(value: object, ctx: _Context) -> str:
    name = _line(value)
    if _AGENT_NAME.fullmatch(name) is None:
        raise _expected('a short lower-case name such as "dana" (a-z, 0-9, . _ -)', value)
    return name


def _strings(value: object) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _expected("a non-empty array of strings", value)
    return [v.strip() for v in value]


def address_list(value: object, ctx: _Context) -> tuple[str, ...]:
    addresses = _strings(value)
    for addr in addresses:
        if _ADDR_SPEC.fullmatch(addr) is None:
            raise _expected('plain addresses such as "dana@example.com"', addr)
    return tuple(addr.lower() for addr in addresses)


def name_list(value: object, ctx: _Context) -> tuple[str, ...]:
    names = _strings(value)
    for name in names:
        if _AGENT_NAME.fullmatch(name) is None:
            raise _expected('short lower-case names such as "default"', name)
    return tuple(names)


def read_secret(raw: bytes) -> bytes:
    """A secret file holds hex (as `mailtick init` writes it) or at least 32 raw bytes."""
    text_form = raw.strip()
    try:
        return bytes.fromhex(text_form.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return raw


def _load_secret(security: Values, ctx: _Context) -> bytes | None:
    env_name = security.get("secret_env")
    if env_name:
        value = ctx.env.get(env_name)
        if not value:
            ctx.report("security.secret_env", f"environment variable {env_name} is not set")
            return None
        return read_secret(value.encode())
    file = security.get("secret_file")
    try:
        return read_secret(Path(str(file)).read_bytes())
    except OSError as exc:
        config = f" -c {ctx.source}" if ctx.source else ""
        ctx.report(
            "security.secret_file",
            f'cannot read {file}: {_reason(exc)} (run "mailtick init{config}" to create it)',
        )
        return None


def _check_agents(agents: list[Values], ctx: _Context) -> None:
    names: set[str] = set()
    owners: dict[str, str] = {}
    for n, agent in enumerate(agents):
        name = agent.get("name", "")
        if name in names:
            ctx.report(f"agents[{n}].name", f'"{name}" is used by another agent')
        names.add(name)
        for addr in agent.get("addresses", ()):
            if addr in owners:
                ctx.report(f"agents[{n}].addresses", f'"{addr}" belongs to agent "{owners[addr]}"')
            owners[addr] = name


def _finish_root(values: Values, raw: Mapping[str, object], where: str, ctx: _Context) -> None:
    """Agents need a reply-token secret of at least 32 bytes; without agents none is read."""
    agents = values.get("agents") or []
    _check_agents(agents, ctx)
    if not agents or "security" not in values:
        return
    secret_bytes = _load_secret(values["security"], ctx)
    if secret_bytes is not None and len(secret_bytes) < 32:
        ctx.report("security", f"the reply-token secret has {len(secret_bytes)} bytes, needs 32")
    values["security"]["secret"] = secret_bytes or b""


# --- database URLs ----------------------------------------------------------------------------

_URL_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@]*):[^@]*@")


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***."""
    return _URL_PASSWORD.sub(r"\1:***@", url)


_SQLITE_FORMS = "sqlite:///relative.db, sqlite:////absolute.db or sqlite:///:memory:"


def _sqlite_url(parts: SplitResult, ctx: _Context) -> str:
    if parts.netloc or parts.fragment or parts.path in ("", "/"):
        raise _expected(_SQLITE_FORMS, parts.geturl())
    path = parts.path[1:]
    if path != ":memory:":
        path = str(_absolute(path, ctx))
    query = f"?{parts.query}" if parts.query else ""
    return f"sqlite:///{path}{query}"


def _postgres_url(parts: SplitResult, url: str) -> str:
    try:
        parts.port  # noqa: B018 -- parsing the port is the check
    except ValueError:
        raise _expected("a numeric port", mask_url(url)) from None
    if not parts.path.strip("/"):
        raise _expected("a database name, as in postgresql://user@host/dbname", mask_url(url))
    return url


def database_url(value: object, ctx: _Context) -> str:
    url = _line(value)
    try:
        parts = urlsplit(url)
        if parts.scheme == "sqlite":
            return _sqlite_url(parts, ctx)
        if parts.scheme in ("postgresql", "postgres"):
            return _postgres_url(parts, url)
    except ValueError:
        raise _expected("a valid URL", mask_url(url)) from None
    raise _expected("a sqlite:/// or postgresql:// URL", mask_url(url))


# --- cross-key checks, run per section after its keys -----------------------------------------

_SECRET_KEYS = ("password", "password_file", "password_env")
_SECRET_KEYS_TEXT = "password, password_file, password_env"


def _given_secrets(raw: Mapping[str, object]) -> list[str]:
    return [key for key in _SECRET_KEYS if key in raw]


def _take_password(values: Values, raw: Mapping[str, object], where: str, ctx: _Context) -> None:
    """Replace password / password_file / password_env by the one resolved password."""
    found = [values.pop(key, None) for key in _SECRET_KEYS]
    values["password"] = next((p for p in found if p is not None), "")
    given = _given_secrets(raw)
    if len(given) > 1:
        others = ", ".join(f"{where}.{key}" for key in given[:-1])
        problem = f"conflicts with {others} (give only one of {_SECRET_KEYS_TEXT})"
        ctx.report(f"{where}.{given[-1]}", problem)


def _require_password(raw: Mapping[str, object], where: str, ctx: _Context, why: str) -> None:
    if not _given_secrets(raw):
        ctx.report(f"{where}.password", f"missing ({why}; give one of {_SECRET_KEYS_TEXT})")


def _default_port(values: Values, ports: Mapping[str, int]) -> None:
    if "port" in values and values["port"] is None and "security" in values:
        values["port"] = ports[values["security"]]


def _check_cleartext(values: Values, where: str, ctx: _Context, what: str) -> None:
    name = values.get("host")
    if values.get("security") != "none" or name is None or _is_loopback(name):
        return
    ctx.report(
        f"{where}.security",
        f'"none" sends {what} in clear; allowed only for a loopback host, got host {_show(name)}',
    )


def _check_order(values: Values, where: str, ctx: _Context, low: str, high: str) -> None:
    if low in values and high in values and values[low] > values[high]:
        limit = f"{where}.{high} ({_num(values[high])})"
        ctx.report(f"{where}.{low}", f"expected <= {limit}, got {_num(values[low])}")


def _same_mailbox(a: str, b: str) -> bool:
    return a == b or a.upper() == b.upper() == "INBOX"  # INBOX is case-insensitive (RFC 3501)


def _check_mailboxes(values: Values, where: str, ctx: _Context) -> None:
    inbox = values.get("mailbox")
    for key in ("processed_mailbox", "quarantine_mailbox"):
        other = values.get(key)
        if inbox is not None and other is not None and _same_mailbox(inbox, other):
            problem = f"expected a mailbox other than {where}.mailbox, got {_show(other)}"
            ctx.report(f"{where}.{key}", problem)


def _finish_imap(values: Values, raw: Mapping[str, object], where: str, ctx: _Context) -> None:
    _take_password(values, raw, where, ctx)
    _require_password(raw, where, ctx, "required")
    _default_port(values, {"tls": 993, "starttls": 143, "none": 143})
    _check_cleartext(values, where, ctx, "the password")
    _check_order(values, where, ctx, "reconnect_min", "reconnect_max")
    _check_mailboxes(values, where, ctx)


def _finish_smtp(values: Values, raw: Mapping[str, object], where: str, ctx: _Context) -> None:
    _take_password(values, raw, where, ctx)
    username = values.get("username")
    given = _given_secrets(raw)
    if username:
        _require_password(raw, where, ctx, f"required because {where}.username is set")
    elif username == "" and given:
        ctx.report(f"{where}.{given[0]}", f"given, but {where}.username is empty (no AUTH)")
    _default_port(values, {"tls": 465, "starttls": 587, "none": 25})
    _check_cleartext(values, where, ctx, "the password" if username else "mail")
    _check_order(values, where, ctx, "retry_min", "retry_max")


def _finish_quarantine(
    values: Values, raw: Mapping[str, object], where: str, ctx: _Context
) -> None:
    values["directory"] = Path(values["directory"])  # the default is given as text


# --- the table --------------------------------------------------------------------------------

SECURITY = choice("tls", "starttls", "none")
SECONDS = number(0, above=True)
LOG_LEVEL = choice("DEBUG", "INFO", "WARNING", "ERROR", fold_case=True)


def _tls_section() -> Section:
    return Section(
        make=TlsSettings,
        keys={
            "verify": Key(boolean, True),
            "ca_file": Key(readable_file, None),
        },
    )


def _secret_keys() -> dict[str, Key]:
    return {
        "password": Key(secret, None),
        "password_file": Key(secret_file, None),
        "password_env": Key(secret_env, None),
    }


IMAP = Section(
    required=True,
    make=ImapConfig,
    finish=_finish_imap,
    keys={
        "host": Key(host, REQUIRED),
        "port": Key(integer(1, 65535), None),  # None: 993 for tls, else 143
        "security": Key(SECURITY, "tls"),
        "username": Key(text(), REQUIRED),
        **_secret_keys(),
        "mailbox": Key(text(), "INBOX"),
        "processed_mailbox": Key(text(), "Processed"),
        "quarantine_mailbox": Key(text(), "Quarantine"),
        "batch_size": Key(integer(1, 500), 50),
        "parse_workers": Key(integer(0, 64), 1),
        "parse_timeout": Key(SECONDS, 60.0),
        "idle": Key(boolean, True),
        "idle_timeout": Key(number(10, 1680), 300.0),
        "poll_interval": Key(SECONDS, 30.0),
        "timeout": Key(SECONDS, 60.0),
        "reconnect_min": Key(SECONDS, 1.0),
        "reconnect_max": Key(SECONDS, 300.0),
        "tls": _tls_section(),
    },
)

SMTP = Section(
    required=True,
    make=SmtpConfig,
    finish=_finish_smtp,
    keys={
        "host": Key(host, REQUIRED),
        "port": Key(integer(1, 65535), None),  # None: 465 for tls, 587 for starttls, 25 for none
        "security": Key(SECURITY, "tls"),
        "username": Key(text(empty_ok=True), ""),
        **_secret_keys(),
        "from_address": Key(mail_address, REQUIRED),
        "timeout": Key(SECONDS, 60.0),
        "retry_min": Key(SECONDS, 30.0),
        "retry_max": Key(SECONDS, 3600.0),
        "max_attempts": Key(integer(1), 20),
        "tls": _tls_section(),
    },
)

SCHEMA = Section(
    keys={
        "imap": IMAP,
        "smtp": SMTP,
        "database": Section(
            required=True,
            make=DatabaseConfig,
            keys={"url": Key(database_url, REQUIRED)},
        ),
        "tickets": Section(
            make=TicketsConfig,
            keys={
                "prefix": Key(ticket_prefix, "MT"),
                "reopen_days": Key(integer(0), 30),
                "default_language": Key(choice("de", "en"), "en"),
                "max_mail_bytes": Key(integer(1), 25 * 1024 * 1024),
            },
        ),
        "log": Section(
            keys={"level": Key(LOG_LEVEL, "INFO")},
        ),
        "quarantine": Section(
            make=QuarantineConfig,
            finish=_finish_quarantine,
            keys={
                "directory": Key(path, "/var/lib/mailtick/quarantine"),
                "max_attempts": Key(integer(1, 100), 3),
            },
        ),
        "limits": Section(
            make=LimitsConfig,
            keys={
                "acks_per_subject": Key(integer(1), 1),
                "ticket_burst": Key(integer(1), 10),
                "daily_per_address": Key(integer(1), 50),
            },
        ),
        "drift": Section(
            make=DriftConfig,
            keys={
                "action": Key(choice("warn", "split", "off"), "warn"),
                "threshold": Key(number(0, 1), 0.6),
            },
        ),
        "security": Section(
            make=SecurityConfig,
            keys={
                "secret_file": Key(path, "/var/lib/mailtick/reply-secret"),
                "secret_env": Key(text(), None),
                "token_days": Key(integer(1, 3650), 90),
                "authserv_id": Key(text(empty_ok=True), ""),
            },
        ),
        "agents": Many(
            Section(
                make=AgentConfig,
                keys={
                    "name": Key(agent_name, REQUIRED),
                    "addresses": Key(address_list, REQUIRED),
                    "display_name": Key(text(empty_ok=True), ""),
                    "queues": Key(name_list, ("default",)),
                },
            )
        ),
    },
    finish=_finish_root,
)


# --- the reader that walks the table ----------------------------------------------------------


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _unknown(name: str, section: Section) -> str:
    close = difflib.get_close_matches(name, list(section.keys), n=1)
    return f'unknown key (did you mean "{close[0]}"?)' if close else "unknown key"


def _read_entry(
    section: Section, name: str, value: object, values: Values, ctx: _Context, where: str
) -> None:
    spec = section.keys.get(name)
    if spec is None:
        ctx.report(where, _unknown(name, section))
    elif isinstance(spec, Section):
        values[name] = _read_section(spec, value, where, ctx)
    elif isinstance(spec, Many):
        values[name] = _read_many(spec, value, where, ctx)
    else:
        try:
            values[name] = spec.check(value, ctx)
        except _Invalid as bad:
            ctx.report(where, str(bad))


def _read_many(spec: Many, raw: object, where: str, ctx: _Context) -> list[Values]:
    if not isinstance(raw, list):
        ctx.report(where, f"expected an array of tables ([[{where}]]), got {_show(raw)}")
        return []
    return [_read_section(spec.section, item, f"{where}[{n}]", ctx) for n, item in enumerate(raw)]


def _fill_default(
    spec: Key | Section | Many, name: str, values: Values, ctx: _Context, where: str
) -> None:
    if isinstance(spec, Many):
        values[name] = []
    elif isinstance(spec, Section) and not spec.required:
        values[name] = _read_section(spec, {}, where, ctx)
    elif isinstance(spec, Section) or spec.default is REQUIRED:
        ctx.report(where, "missing (required)")
    else:
        values[name] = spec.default


def _read_section(section: Section, raw: object, where: str, ctx: _Context) -> Values:
    if not isinstance(raw, Mapping):
        ctx.report(where, f"expected a table, got {_show(raw)}")
        return {}
    values: Values = {}
    for name, value in raw.items():
        _read_entry(section, name, value, values, ctx, _join(where, name))
    for name, spec in section.keys.items():
        if name not in raw:
            _fill_default(spec, name, values, ctx, _join(where, name))
    if section.finish is not None:
        section.finish(values, raw, where, ctx)
    return values


def _build(section: Section, values: Values) -> Any:
    built: Values = {}
    for name, value in values.items():
        spec = section.keys.get(name)
        if isinstance(spec, Many):
            built[name] = tuple(_build(spec.section, item) for item in value)
        else:
            built[name] = _build(spec, value) if isinstance(spec, Section) else value
    return built if section.make is None else section.make(**built)


# --- public API -------------------------------------------------------------------------------


def parse_config(
    data: Mapping[str, object], env: Mapping[str, str], source: Path | None = None
) -> Config:
    """Validate parsed TOML; raise ConfigError listing every problem."""
    base_dir = Path(os.path.abspath(source)).parent if source is not None else Path.cwd()
    ctx = _Context(base_dir=base_dir, env=env, source=source)
    values = _read_section(SCHEMA, data, "", ctx)
    if ctx.problems:
        raise ConfigError(ctx.problems)
    parts = _build(SCHEMA, values)
    return Config(
        imap=parts["imap"],
        smtp=parts["smtp"],
        database=parts["database"],
        tickets=parts["tickets"],
        agents=parts["agents"],
        security=parts["security"],
        drift=parts["drift"],
        quarantine=parts["quarantine"],
        limits=parts["limits"],
        log_level=parts["log"]["level"],
        source=Path(os.path.abspath(source)) if source is not None else None,
    )


def secret_path(path: Path) -> Path:
    """Where the reply-token secret of the config at `path` lives (for `mailtick init`)."""
    data = _read_toml(path)
    security = data.get("security")
    raw = security.get("secret_file") if isinstance(security, dict) else None
    default = SCHEMA.keys["security"].keys["secret_file"].default  # type: ignore[union-attr]
    base = Path(os.path.abspath(path)).parent
    return Path(os.path.abspath(base / Path(str(raw or default)).expanduser()))


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and type config.toml; env defaults to os.environ."""
    return parse_config(_read_toml(path), os.environ if env is None else env, source=path)


_AT_LINE = re.compile(r"(?P<message>.*) \(at line (?P<line>\d+), column (?P<column>\d+)\)", re.S)


def _syntax_problem(path: Path, content: str, exc: tomllib.TOMLDecodeError) -> str:
    message = str(exc)
    at = _AT_LINE.fullmatch(message)
    if at is not None:
        return f"{path}: line {at['line']}: {at['message']} (column {at['column']})"
    last_line = max(1, len(content.splitlines()))
    message = message.removesuffix(" (at end of document)")
    return f"{path}: line {last_line}: {message} (at end of file)"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {_reason(exc)}"]) from None
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([f"{path}: line {line}: not valid UTF-8"]) from None
    try:
        return tomllib.loads(content)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_problem(path, content, exc)]) from None


# --- describe: for `mailtick check-config` ----------------------------------------------------


def _tls_text(security: Security, tls: TlsSettings) -> str:
    if security == "none":
        return "no TLS (loopback only)"
    checked = "certificate verified" if tls.verify else "certificate NOT verified"
    extra = f", CA file {tls.ca_file}" if tls.ca_file is not None else ""
    return f"{security}, {checked}{extra}"


def _server_text(host: str, port: int, security: Security, tls: TlsSettings) -> str:
    address = f"[{host}]" if ":" in host else host
    return f"{address}:{port}, {_tls_text(security, tls)}"


def _login_text(username: str) -> str:
    return f"login {username}, password set" if username else "no AUTH"


def _describe_imap(imap: ImapConfig) -> list[str]:
    wait = f"IDLE renewed every {_num(imap.idle_timeout)} s" if imap.idle else "IDLE off"
    return [
        f"imap:      {_server_text(imap.host, imap.port, imap.security, imap.tls)}",
        f"           {_login_text(imap.username)}",
        f"           mailbox {_show(imap.mailbox)} -> {_show(imap.processed_mailbox)}, "
        f"quarantine {_show(imap.quarantine_mailbox)}",
        f"           {wait}, poll every {_num(imap.poll_interval)} s, batches of {imap.batch_size}",
    ]


def _describe_smtp(smtp: SmtpConfig) -> list[str]:
    return [
        f"smtp:      {_server_text(smtp.host, smtp.port, smtp.security, smtp.tls)}",
        f"           {_login_text(smtp.username)}",
        f"           from {smtp.from_address}, up to {smtp.max_attempts} attempts",
    ]


def describe(config: Config) -> str:
    """A short human summary for `mailtick check-config`; never prints a secret."""
    tickets = config.tickets
    lines = [
        f"config:    {config.source if config.source is not None else '(not from a file)'}",
        *_describe_imap(config.imap),
        *_describe_smtp(config.smtp),
        f"database:  {mask_url(config.database.url)}",
        f"tickets:   [{tickets.prefix}#...], reopen within {tickets.reopen_days} days, "
        f"default language {tickets.default_language}",
        f"log level: {config.log_level}",
    ]
    return "\n".join(lines)
