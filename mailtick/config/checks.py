"""Config: the checks of one value each, and how values are shown. Touches files and env.

A check takes the TOML value and a Context and returns the converted value or raises Invalid;
the reader puts the dotted key path in front of the message.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email import errors as email_errors
from email import policy as email_policy
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from mailtick.config.sections import mask_url


@dataclass
class Context:
    base_dir: Path  # relative paths are relative to this (the config file's directory)
    env: Mapping[str, str]
    source: Path | None = None
    problems: list[str] = field(default_factory=list)

    def report(self, where: str, problem: str) -> None:
        self.problems.append(f"{where}: {problem}")


class Invalid(Exception):
    """A check's verdict on one value; the reader prefixes the dotted key path."""


Check = Callable[[object, Context], object]


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


def num(value: float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def show(value: object) -> str:
    """Strings quoted, numbers bare, anything else named."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return num(value)
    return _kind(value)


def _expected(what: str, value: object) -> Invalid:
    return Invalid(f"expected {what}, got {show(value)}")


# --- checks: one value each -------------------------------------------------------------------


def boolean(value: object, ctx: Context) -> bool:
    if not isinstance(value, bool):
        raise _expected("a boolean", value)
    return value


def _range_text(lo: float, hi: float | None, above: bool) -> str:
    if hi is not None:
        return f"{num(lo)}..{num(hi)}"
    return f"{'>' if above else '>='} {num(lo)}"


def _within(value: float, lo: float, hi: float | None, above: bool = False) -> None:
    too_low = value <= lo if above else value < lo
    if too_low or (hi is not None and value > hi):
        raise _expected(_range_text(lo, hi, above), value)


def integer(lo: int, hi: int | None = None) -> Check:
    def check(value: object, ctx: Context) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _expected("an integer", value)
        _within(value, lo, hi)
        return value

    return check


def number(lo: float, hi: float | None = None, *, above: bool = False) -> Check:
    """A float; integers are accepted. `above`: lo itself is excluded."""

    def check(value: object, ctx: Context) -> float:
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
    def check(value: object, ctx: Context) -> str:
        return _line(value, empty_ok)

    return check


def choice(*options: str, fold_case: bool = False) -> Check:
    def check(value: object, ctx: Context) -> str:
        folded = value.upper() if fold_case and isinstance(value, str) else value
        if not isinstance(folded, str) or folded not in options:
            listed = ", ".join(json.dumps(option) for option in options)
            raise _expected(f"one of {listed}", value)
        return folded

    return check


_HOST_NAME = re.compile(r"[\w.-]+")


def host(value: object, ctx: Context) -> str:
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


def is_loopback(name: str) -> bool:
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _absolute(raw: str, ctx: Context) -> Path:
    return Path(os.path.abspath(ctx.base_dir / Path(raw).expanduser()))


def os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def readable_file(value: object, ctx: Context) -> Path:
    path = _absolute(_line(value), ctx)
    try:
        path.open("rb").close()
    except OSError as exc:
        raise Invalid(f"cannot read {path}: {os_reason(exc)}") from None
    return path


def secret(value: object, ctx: Context) -> str:
    """An inline password: never echoed in a problem."""
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {_kind(value)}")
    if not value:
        raise _expected("a non-empty string", value)
    if _has_break(value):
        raise Invalid("expected a single-line string, got a string with a line break")
    return value


def secret_file(value: object, ctx: Context) -> str:
    path = _absolute(_line(value), ctx)
    try:
        content = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise Invalid(f"cannot read {path}: {os_reason(exc)}") from None
    except UnicodeDecodeError:
        raise Invalid(f"cannot read {path}: not valid UTF-8") from None
    password = content.rstrip("\r\n")
    if not password:
        raise Invalid(f"{path} is empty")
    if _has_break(password):
        raise Invalid(f"{path} holds more than one line")
    return password


def secret_env(value: object, ctx: Context) -> str:
    name = _line(value)
    password = ctx.env.get(name)
    if password is None:
        raise Invalid(f"environment variable {name} is not set")
    if not password:
        raise Invalid(f"environment variable {name} is empty")
    if _has_break(password):
        raise Invalid(f"environment variable {name} holds a line break")
    return password


def mail_address(value: object, ctx: Context) -> str:
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


def ticket_prefix(value: object, ctx: Context) -> str:
    prefix = _line(value)
    if _PREFIX.fullmatch(prefix) is None:
        raise _expected("1 to 10 letters and digits, starting with a letter", value)
    return prefix


# --- paths, agents, the reply-token secret ---------------------------------------------------

_AGENT_NAME = re.compile(r"[a-z][a-z0-9._-]{0,31}")
_ADDR_SPEC = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


def path(value: object, ctx: Context) -> Path:
    return _absolute(_line(value), ctx)


def agent_name(value: object, ctx: Context) -> str:
    name = _line(value)
    if _AGENT_NAME.fullmatch(name) is None:
        raise _expected('a short lower-case name such as "dana" (a-z, 0-9, . _ -)', value)
    return name


def _strings(value: object) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _expected("a non-empty array of strings", value)
    return [v.strip() for v in value]


def address_list(value: object, ctx: Context) -> tuple[str, ...]:
    addresses = _strings(value)
    for addr in addresses:
        if _ADDR_SPEC.fullmatch(addr) is None:
            raise _expected('plain addresses such as "dana@example.com"', addr)
    return tuple(addr.lower() for addr in addresses)


def address_list_or_none(value: object, ctx: Context) -> tuple[str, ...]:
    """Like address_list, and `[]` for none."""
    return () if value == [] else address_list(value, ctx)


def name_list_or_none(value: object, ctx: Context) -> tuple[str, ...]:
    """Like name_list, and `[]` for none."""
    return () if value == [] else name_list(value, ctx)


def queue_name(value: object, ctx: Context) -> str:
    """A queue's name, or "" for none."""
    return "" if value == "" else agent_name(value, ctx)


def phrase_list(value: object, ctx: Context) -> tuple[str, ...]:
    """Words or phrases to look for: non-empty strings (or `[]` for none)."""
    if value == []:
        return ()
    phrases = _strings(value)
    if any(not p for p in phrases):
        raise _expected("non-empty words or phrases", value)
    return tuple(phrases)


_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


def domain_list(value: object, ctx: Context) -> tuple[str, ...]:
    """Domain names (or `[]` for none)."""
    if value == []:
        return ()
    domains = [d.lower() for d in _strings(value)]
    for domain in domains:
        if _DOMAIN.fullmatch(domain) is None:
            raise _expected('domain names such as "kunde.example"', domain)
    return tuple(domains)


def name_list(value: object, ctx: Context) -> tuple[str, ...]:
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


# --- database URLs ----------------------------------------------------------------------------

_SQLITE_FORMS = "sqlite:///relative.db, sqlite:////absolute.db or sqlite:///:memory:"


def _sqlite_url(parts: SplitResult, ctx: Context) -> str:
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


def database_url(value: object, ctx: Context) -> str:
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
