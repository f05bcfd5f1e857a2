"""Config: the rules that span keys, run per section after its keys. Touches files and env.

Each `finish_*` gets the section's values read so far, its raw TOML table, its dotted path and
the Context; it reports problems and may replace values (the resolved password, a port that
follows the security mode, the reply-token secret).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mailtick.config.checks import (
    Context,
    is_loopback,
    num,
    os_reason,
    read_secret,
    show,
)
from mailtick.config.spec import Values

_SECRET_KEYS = ("password", "password_file", "password_env")
_SECRET_KEYS_TEXT = "password, password_file, password_env"


def _given_secrets(raw: Mapping[str, object]) -> list[str]:
    return [key for key in _SECRET_KEYS if key in raw]


def take_password(values: Values, raw: Mapping[str, object], where: str, ctx: Context) -> None:
    """Replace password / password_file / password_env by the one resolved password."""
    found = [values.pop(key, None) for key in _SECRET_KEYS]
    values["password"] = next((p for p in found if p is not None), "")
    given = _given_secrets(raw)
    if len(given) > 1:
        others = ", ".join(f"{where}.{key}" for key in given[:-1])
        problem = f"conflicts with {others} (give only one of {_SECRET_KEYS_TEXT})"
        ctx.report(f"{where}.{given[-1]}", problem)


def _require_password(raw: Mapping[str, object], where: str, ctx: Context, why: str) -> None:
    if not _given_secrets(raw):
        ctx.report(f"{where}.password", f"missing ({why}; give one of {_SECRET_KEYS_TEXT})")


def _default_port(values: Values, ports: Mapping[str, int]) -> None:
    if "port" in values and values["port"] is None and "security" in values:
        values["port"] = ports[values["security"]]


def _check_cleartext(values: Values, where: str, ctx: Context, what: str) -> None:
    name = values.get("host")
    if values.get("security") != "none" or name is None or is_loopback(name):
        return
    ctx.report(
        f"{where}.security",
        f'"none" sends {what} in clear; allowed only for a loopback host, got host {show(name)}',
    )


def _check_order(values: Values, where: str, ctx: Context, low: str, high: str) -> None:
    if low in values and high in values and values[low] > values[high]:
        limit = f"{where}.{high} ({num(values[high])})"
        ctx.report(f"{where}.{low}", f"expected <= {limit}, got {num(values[low])}")


def _same_mailbox(a: str, b: str) -> bool:
    return a == b or a.upper() == b.upper() == "INBOX"  # INBOX is case-insensitive (RFC 3501)


def _check_mailboxes(values: Values, where: str, ctx: Context) -> None:
    inbox = values.get("mailbox")
    for key in ("processed_mailbox", "quarantine_mailbox"):
        other = values.get(key)
        if inbox is not None and other is not None and _same_mailbox(inbox, other):
            problem = f"expected a mailbox other than {where}.mailbox, got {show(other)}"
            ctx.report(f"{where}.{key}", problem)


def finish_imap(values: Values, raw: Mapping[str, object], where: str, ctx: Context) -> None:
    take_password(values, raw, where, ctx)
    _require_password(raw, where, ctx, "required")
    _default_port(values, {"tls": 993, "starttls": 143, "none": 143})
    _check_cleartext(values, where, ctx, "the password")
    _check_order(values, where, ctx, "reconnect_min", "reconnect_max")
    _check_mailboxes(values, where, ctx)


def finish_smtp(values: Values, raw: Mapping[str, object], where: str, ctx: Context) -> None:
    take_password(values, raw, where, ctx)
    username = values.get("username")
    given = _given_secrets(raw)
    if username:
        _require_password(raw, where, ctx, f"required because {where}.username is set")
    elif username == "" and given:
        ctx.report(f"{where}.{given[0]}", f"given, but {where}.username is empty (no AUTH)")
    _default_port(values, {"tls": 465, "starttls": 587, "none": 25})
    _check_cleartext(values, where, ctx, "the password" if username else "mail")
    _check_order(values, where, ctx, "retry_min", "retry_max")


def _load_secret(security: Values, ctx: Context) -> bytes | None:
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
            f'cannot read {file}: {os_reason(exc)} (run "mailtick init{config}" to create it)',
        )
        return None


def _check_agents(agents: list[Values], ctx: Context) -> None:
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


MATCH_KEYS = ("to", "language", "words", "from_domains", "mailbox")


def _check_queues(values: Values, ctx: Context) -> None:
    """Queues have unique names and their leads are agents; every routing rule sets a
    queue or a priority, matches on something, and names a queue that exists: "default",
    a [[queues]] block or one an agent joins."""
    agents = {agent.get("name") for agent in values.get("agents") or []}
    known = {"default"} | {
        q for agent in values.get("agents") or [] for q in agent.get("queues", ())
    }
    seen: set[str] = set()
    for n, queue in enumerate(values.get("queues") or []):
        name = queue.get("name", "")
        if name in seen:
            ctx.report(f"queues[{n}].name", f'"{name}" is declared twice')
        seen.add(name)
        for lead in queue.get("leads", ()):
            if lead not in agents:
                ctx.report(f"queues[{n}].leads", f'"{lead}" is not an agent')
    known |= seen
    for n, rule in enumerate(values.get("routing") or []):
        if not rule.get("queue") and not rule.get("priority"):
            ctx.report(f"routing[{n}]", "sets neither a queue nor a priority")
        if rule.get("queue") and rule["queue"] not in known:
            ctx.report(
                f"routing[{n}].queue", f'"{rule["queue"]}" is no queue ({", ".join(sorted(known))})'
            )
        if not any(rule.get(key) for key in MATCH_KEYS):
            ctx.report(
                f"routing[{n}]", f"matches nothing: give at least one of {', '.join(MATCH_KEYS)}"
            )


def finish_root(values: Values, raw: Mapping[str, object], where: str, ctx: Context) -> None:
    """Agents need a reply-token secret of at least 32 bytes; without agents none is read.
    Queues and routing rules name what exists."""
    agents = values.get("agents") or []
    _check_agents(agents, ctx)
    _check_queues(values, ctx)
    if not agents or "security" not in values:
        return
    secret_bytes = _load_secret(values["security"], ctx)
    if secret_bytes is not None and len(secret_bytes) < 32:
        ctx.report("security", f"the reply-token secret has {len(secret_bytes)} bytes, needs 32")
    values["security"]["secret"] = secret_bytes or b""
