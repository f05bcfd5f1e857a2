"""Config: config.toml -> validated, typed Config, by walking the schema. Touches files and env.

Every problem is collected, one line per bad key naming its dotted path, before anything is
built; ConfigError carries them all.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mailtick.config.checks import Context, Invalid, os_reason, show
from mailtick.config.schema import SCHEMA
from mailtick.config.sections import Config, ConfigError, SecurityConfig
from mailtick.config.spec import REQUIRED, Key, Many, Section, Values


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _unknown(name: str, section: Section) -> str:
    close = difflib.get_close_matches(name, list(section.keys), n=1)
    return f'unknown key (did you mean "{close[0]}"?)' if close else "unknown key"


def _read_entry(
    section: Section, name: str, value: object, values: Values, ctx: Context, where: str
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
        except Invalid as bad:
            ctx.report(where, str(bad))


def _read_many(spec: Many, raw: object, where: str, ctx: Context) -> list[Values]:
    if not isinstance(raw, list):
        ctx.report(where, f"expected an array of tables ([[{where}]]), got {show(raw)}")
        return []
    return [_read_section(spec.section, item, f"{where}[{n}]", ctx) for n, item in enumerate(raw)]


def _fill_default(
    spec: Key | Section | Many, name: str, values: Values, ctx: Context, where: str
) -> None:
    if isinstance(spec, Many):
        values[name] = []
    elif isinstance(spec, Section) and not spec.required:
        values[name] = _read_section(spec, {}, where, ctx)
    elif isinstance(spec, Section) or spec.default is REQUIRED:
        ctx.report(where, "missing (required)")
    else:
        values[name] = spec.default


def _read_section(section: Section, raw: object, where: str, ctx: Context) -> Values:
    if not isinstance(raw, Mapping):
        ctx.report(where, f"expected a table, got {show(raw)}")
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


def parse_config(
    data: Mapping[str, object], env: Mapping[str, str], source: Path | None = None
) -> Config:
    """Validate parsed TOML; raise ConfigError listing every problem."""
    base_dir = Path(os.path.abspath(source)).parent if source is not None else Path.cwd()
    ctx = Context(base_dir=base_dir, env=env, source=source)
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
        queues=parts["queues"],
        routing=parts["routing"],
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
    default = SecurityConfig().secret_file
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
        raise ConfigError([f"cannot read {path}: {os_reason(exc)}"]) from None
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([f"{path}: line {line}: not valid UTF-8"]) from None
    try:
        return tomllib.loads(content)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_problem(path, content, exc)]) from None
