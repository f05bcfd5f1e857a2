"""Config: the table of every accepted key, its check and its cross-key rules. Touches nothing.

SCHEMA maps section -> key -> Key(check). Defaults are not written here: a Key without one
takes its section dataclass's field default (spec.py), so sections.py is their one source.
"""

from __future__ import annotations

from typing import get_args

from mailtick.config.checks import (
    address_list,
    address_list_or_none,
    agent_name,
    boolean,
    choice,
    database_url,
    domain_list,
    host,
    integer,
    mail_address,
    name_list,
    name_list_or_none,
    number,
    path,
    phrase_list,
    queue_name,
    readable_file,
    secret,
    secret_env,
    secret_file,
    text,
    ticket_prefix,
)
from mailtick.config.rules import finish_imap, finish_root, finish_smtp
from mailtick.config.sections import (
    PRIORITIES,
    AgentConfig,
    Config,
    DatabaseConfig,
    DriftAction,
    DriftConfig,
    ImapConfig,
    Language,
    LimitsConfig,
    QuarantineConfig,
    QueueConfig,
    RoutingRule,
    Security,
    SecurityConfig,
    SmtpConfig,
    TicketsConfig,
    TlsSettings,
)
from mailtick.config.spec import Key, Many, Section, field_default

SECURITY = choice(*get_args(Security))
SECONDS = number(0, above=True)
LOG_LEVEL = choice("DEBUG", "INFO", "WARNING", "ERROR", fold_case=True)
PORT = integer(1, 65535)


def _tls_section() -> Section:
    return Section(
        make=TlsSettings,
        keys={
            "verify": Key(boolean),
            "ca_file": Key(readable_file),
        },
    )


def _secret_keys() -> dict[str, Key]:
    """The three ways to give a password; None: not given (rules.take_password picks one)."""
    return {
        "password": Key(secret, None),
        "password_file": Key(secret_file, None),
        "password_env": Key(secret_env, None),
    }


IMAP = Section(
    required=True,
    make=ImapConfig,
    finish=finish_imap,
    keys={
        "host": Key(host),
        "port": Key(PORT, None),  # None: 993 for tls, else 143 (rules.finish_imap)
        "security": Key(SECURITY),
        "username": Key(text()),
        **_secret_keys(),
        "mailbox": Key(text()),
        "processed_mailbox": Key(text()),
        "quarantine_mailbox": Key(text()),
        "batch_size": Key(integer(1, 500)),
        "parse_workers": Key(integer(0, 64)),
        "parse_timeout": Key(SECONDS),
        "idle": Key(boolean),
        "idle_timeout": Key(number(10, 1680)),
        "poll_interval": Key(SECONDS),
        "timeout": Key(SECONDS),
        "reconnect_min": Key(SECONDS),
        "reconnect_max": Key(SECONDS),
        "tls": _tls_section(),
    },
)

SMTP = Section(
    required=True,
    make=SmtpConfig,
    finish=finish_smtp,
    keys={
        "host": Key(host),
        "port": Key(PORT, None),  # None: 465 for tls, 587 for starttls, 25 for none
        "security": Key(SECURITY),
        "username": Key(text(empty_ok=True)),
        **_secret_keys(),
        "from_address": Key(mail_address),
        "timeout": Key(SECONDS),
        "retry_min": Key(SECONDS),
        "retry_max": Key(SECONDS),
        "max_attempts": Key(integer(1)),
        "tls": _tls_section(),
    },
)

AGENT = Section(
    make=AgentConfig,
    keys={
        "name": Key(agent_name),
        "addresses": Key(address_list),
        "display_name": Key(text(empty_ok=True)),
        "queues": Key(name_list),
    },
)

QUEUE = Section(
    make=QueueConfig,
    keys={
        "name": Key(agent_name),
        "leads": Key(name_list_or_none),
    },
)

ROUTING_RULE = Section(
    make=RoutingRule,
    keys={
        "name": Key(text(empty_ok=True)),
        "queue": Key(queue_name),
        "priority": Key(choice("", *PRIORITIES)),
        "to": Key(address_list_or_none),
        "language": Key(choice("", *get_args(Language))),
        "words": Key(phrase_list),
        "from_domains": Key(domain_list),
        "mailbox": Key(text(empty_ok=True)),
    },
)

SCHEMA = Section(
    keys={
        "imap": IMAP,
        "smtp": SMTP,
        "database": Section(
            required=True,
            make=DatabaseConfig,
            keys={"url": Key(database_url)},
        ),
        "tickets": Section(
            make=TicketsConfig,
            keys={
                "prefix": Key(ticket_prefix),
                "reopen_days": Key(integer(0)),
                "default_language": Key(choice(*get_args(Language))),
                "max_mail_bytes": Key(integer(1)),
                "form_senders": Key(address_list_or_none),
            },
        ),
        "log": Section(  # read into Config.log_level
            keys={"level": Key(LOG_LEVEL, field_default(Config, "log_level"))},
        ),
        "quarantine": Section(
            make=QuarantineConfig,
            keys={
                "directory": Key(path),
                "max_attempts": Key(integer(1, 100)),
            },
        ),
        "limits": Section(
            make=LimitsConfig,
            keys={
                "acks_per_subject": Key(integer(1)),
                "ticket_burst": Key(integer(1)),
                "daily_per_address": Key(integer(1)),
                "answers_per_base_address": Key(integer(1)),
            },
        ),
        "drift": Section(
            make=DriftConfig,
            keys={
                "action": Key(choice(*get_args(DriftAction))),
                "threshold": Key(number(0, 1)),
            },
        ),
        "security": Section(
            make=SecurityConfig,
            keys={
                "secret_file": Key(path),
                "secret_env": Key(text()),
                "token_days": Key(integer(1, 3650)),
                "authserv_id": Key(text(empty_ok=True)),
            },
        ),
        "agents": Many(AGENT),
        "queues": Many(QUEUE),
        "routing": Many(ROUTING_RULE),
    },
    finish=finish_root,
)
